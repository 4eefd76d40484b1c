/* One pipeline stage's work for one step plan: stage 1 embeds the input rows (token
 * ids through embed_tokens, visual rows through mm_projector), every stage runs its own
 * layers with the plan's block tables over its own KV cache, stage P takes the final
 * norm + lm_head and samples, or, for rows in image mode, the vision head + L2 norm.
 * Activations come from and go to the neighbours through an mm_transport. It holds no
 * request state: everything it needs is in the plan, so every stage stays in step. */
#ifndef MM_STAGE_H
#define MM_STAGE_H

#include <stdint.h>

#include "model/llama.h"
#include "model/metamorph.h"
#include "pipeline/serve_config.h"
#include "proto/internal.pb-c.h"
#include "transport.h"

/* Visual rows are projected / predicted this many at a time (one image's worth): on the
 * CPU backends row results are batch-invariant up to 256 rows, so the chunking never
 * changes a bit (on CUDA, cuBLAS results depend on the batch shape). */
#define MM_STAGE_VISUAL_CHUNK 64

typedef struct {
    mm_backend *be;
    mm_llama *llm;      /* half-layer blocks [block_begin, block_end) + embed (first) + head (last) */
    mm_kv_cache *kv;    /* this stage's attention layers, cfg->kv_blocks blocks */
    int first, last;
    int prev, next;     /* transport peers (ranks), -1 at the ends */
    mm_transport *tr;
    mm_metamorph *mm;   /* mm_projector + vision_head (first / last stage of a MetaMorph model), else NULL */
    int32_t visual_dim; /* mm_hidden_size; 0 without mm */
    float *z;           /* [MM_STAGE_VISUAL_CHUNK, visual_dim] backend: visual rows in, or predicted out */
    float *e;           /* [MM_STAGE_VISUAL_CHUNK, dim] backend: projected visual rows */
    /* per-step buffers, grown on demand */
    int64_t cap;
    float *x;           /* [cap, dim] backend memory */
    int32_t *ids, *pos, *slots;
    mm_attn_row *rows;  /* [cap] */
    int64_t out_cap;
    float *sel;         /* [out_cap, dim] backend: rows whose outputs are wanted */
    float *logits;      /* [out_cap, vocab] backend */
    mm_sampling *samp;  /* [out_cap] */
    uint64_t *rng;      /* [out_cap] */
    int32_t *picked;    /* [out_cap] */
    double busy_ms;     /* compute time, not waiting for neighbours */
    uint64_t steps;
} mm_stage;

mm_status mm_stage_init(const mm_serve_config *cfg, int32_t block_begin, int32_t block_end, int first, int last,
                        int prev, int next, mm_transport *tr, mm_stage **out);
void mm_stage_free(mm_stage *st);
/* Runs one plan. On the last stage res gets one SeqResult per output (res->seqs and
 * their visual arrays are malloc'd: free with mm_stage_result_free). */
mm_status mm_stage_run(mm_stage *st, const Metamorph__Internal__StepPlan *plan, Metamorph__Internal__StepResult *res);
void mm_stage_result_free(Metamorph__Internal__StepResult *res);

#endif
