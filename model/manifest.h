/* The model directory layout of DESIGN.md section 5: a root with metamorph.json naming
 * its parts (llm/, vision/, decoder/), or, for convenience, an HF LLaMA directory given
 * directly (config.json + safetensors + tokenizer.json). */
#ifndef MM_MANIFEST_H
#define MM_MANIFEST_H

#include <stddef.h>

#include "common/status.h"

typedef struct {
    char llm[4096];     /* HF LLaMA directory */
    char vision[4096];  /* HF SigLIP directory, "" if none */
    char decoder[4096]; /* diffusers decoder directory, "" if none */
} mm_model_paths;

mm_status mm_model_paths_resolve(const char *dir, mm_model_paths *out);

#endif
