/* Attention on the GPU: paged attention over block tables (decode and prefill rows
 * alike, grouped-query, split-K over long contexts) and dense unmasked attention
 * (SigLIP, UNet, VAE), one kernel for both. */
#ifndef MM_CUDA_ATTENTION_CUH
#define MM_CUDA_ATTENTION_CUH

#include "cuda_common.cuh"

/* rows is host memory (block tables included), as in mm_backend_ops.attention. */
mm_status mm_cuda_attention(mm_backend *be, const float *q, const void *k_cache, const void *v_cache,
                            const mm_attn_row *rows, int64_t M, const mm_attn_shape *shape, float *out);
mm_status mm_cuda_attention_dense(mm_backend *be, const float *q, const float *k, const float *v, int64_t batch,
                                  int64_t Tq, int64_t Tk, int32_t n_heads, int32_t head_dim, float scale, float *out);

#endif
