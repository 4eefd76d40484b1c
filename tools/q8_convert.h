/* Writing the q8 format (common/q8.h) from float weights, shared by mm-quantize (any
 * f32/bf16/f16 checkpoint) and mm-mkmodel --dtype q8 (random weights): which tensors it
 * covers, the quantization of one tensor, and the config.json entry. */
#ifndef MM_Q8_CONVERT_H
#define MM_Q8_CONVERT_H

#include <jansson.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"

/* Is name a LLaMA linear weight the q8 format stores: model.layers.N.self_attn.{q,k,v,o}_proj.weight,
 * model.layers.N.mlp.{gate,up,down}_proj.weight, and lm_head.weight when lm_head != 0. */
int q8_is_linear(const char *name, int lm_head);

/* w [N, K] of float dtype dt -> *q [N, K] int8 and *d [N, K/32] f16 (both malloc'd). */
mm_status q8_quantize_tensor(const char *name, mm_dtype dt, const void *w, int64_t N, int64_t K, int8_t **q,
                             uint16_t **d);

/* Sets config's quantization_config (and torch_dtype of what stays float is left alone). */
int q8_config_set(json_t *config);


/* Converts the checkpoint directory src (config.json + safetensors, f32/bf16/f16) into
 * dst (created): the linear weights to q8, lm_head too when lm_head != 0 (a tied
 * embedding is then written as a separate lm_head and the tie dropped), every other
 * tensor copied as it is (so is a linear weight whose K is not a multiple of 32), config.json given its quantization_config, the other files
 * of src (tokenizer.json, generation_config.json, ...) copied. Shards of at most
 * shard_bytes of output. Returns 0 on success; messages on stderr. */
int q8_convert_dir(const char *src, const char *dst, int lm_head, size_t shard_bytes);

/* Copies the file src to dst; 0 on success (message on stderr otherwise). */
int tool_copy_file(const char *src, const char *dst);

#endif
