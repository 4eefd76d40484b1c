/* Shared by mm-mkmodel's writers (mm-mkmodel.c: LLaMA presets; mkmodel_siglip.c:
 * SigLIP vision towers): the deterministic weight generator and the SigLIP writer. */
#ifndef MM_MKMODEL_H
#define MM_MKMODEL_H

#include <stdint.h>

#include "common/dtype.h"

/* n values of dtype dt: 1 when is_norm, else uniform with std 0.02 (rng: common/rng.h) */
void fill(void *data, mm_dtype dt, int64_t n, int is_norm, uint64_t *rng);

/* Writes an HF SigLIP vision checkpoint (config.json, preprocessor_config.json,
 * model.safetensors; keys vision_model.*) with so400m-patch14-384 shapes (layers > 0
 * overrides the depth). Returns 0 on success; messages on stderr. */
int mkmodel_siglip_write(const char *dir, mm_dtype dt, int layers, uint64_t seed);

#endif
