/* Gather/scatter ops of the CUDA backend: embedding rows, KV-cache stores at paged
 * slots, SigLIP patch extraction and bilinear resize. Index arrays are host memory. */
#ifndef MM_CUDA_GATHER_CUH
#define MM_CUDA_GATHER_CUH

#include "cuda_common.cuh"

mm_status mm_cuda_embed(mm_backend *be, const mm_tensor *table, const int32_t *ids, int64_t M, float *y);
mm_status mm_cuda_kv_store(mm_backend *be, void *k_cache, void *v_cache, const float *k, const float *v,
                           const int32_t *slots, int64_t M, const mm_attn_shape *shape);
mm_status mm_cuda_patchify(mm_backend *be, const float *x, float *y, int64_t B, int64_t C, int64_t H, int64_t W,
                           int32_t p);
mm_status mm_cuda_resize_bilinear(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                  int64_t C, int64_t Ho, int64_t Wo);

#endif
