/* Which stage computes which part of the LLaMA: the pipeline runs at the pace of its
 * slowest stage, and an even split of layers leaves the last stage with the final
 * norm + lm_head as well (with a 128k vocabulary that is more than all the layers of a
 * small model), so the split follows a cost model instead. Every stage and the
 * coordinator compute the same split from the same config, so nothing is sent.
 *
 * The unit is the half-layer block of model/llama.h (a layer's self-attention or its
 * MLP), which makes the split fine enough to balance a few stages over few layers.
 * Cost of a block or of the head, in multiply-accumulates per token the pipeline
 * computes (all backends spend their time in these GEMMs at serving batch sizes):
 *   self_attn  dim * (q + 2 kv + o widths)  +  2 * q width * MM_SPLIT_MEAN_CONTEXT
 *   mlp        3 * dim * intermediate_size
 *   lm_head    dim * vocab  * share of tokens that are sampled (split_decode_percent)
 * The head runs only for the tokens that produce an output (every decode step, the
 * last token of a prompt), so its weight depends on the workload: the config's
 * split_decode_percent = output tokens / (prompt + output tokens) in percent.
 * The embedding (a row lookup), the sampler and MetaMorph's mm_projector / vision head
 * (only image rows) are left out. */
#ifndef MM_STAGE_SPLIT_H
#define MM_STAGE_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "model/llama.h"
#include "pipeline/serve_config.h"

/* Mean number of keys a token attends to in the cost model (a serving mix of short
 * chats); attention is a small term below a few thousand tokens of context. */
#define MM_SPLIT_MEAN_CONTEXT 256

/* Modelled cost of each half-layer block [n_layers * MM_LLAMA_BLOCKS_PER_LAYER] and of the
 * final norm + lm_head, for decode_percent sampled tokens per 100 computed. */
void mm_split_costs(const mm_llama_config *lc, int32_t decode_percent, double *block_cost, double *head_cost);

/* Splits the model's blocks over n_stages: stage k computes blocks [begin[k], end[k]),
 * each at least one block. c->stage_layers (whole layers) when given, else the split
 * whose costliest stage costs least (ties: the most even one). */
mm_status mm_split_stages(const mm_serve_config *c, const mm_llama_config *lc, int32_t n_stages, int32_t *begin,
                          int32_t *end);

/* "layers [0, 7) + 7.self_attn" for blocks [begin, end), into buf. */
void mm_split_describe(int32_t begin, int32_t end, char *buf, size_t n);

#endif
