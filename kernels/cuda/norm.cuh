/* Row-reduction ops of the CUDA backend: rmsnorm, layernorm, l2norm, softmax (one
 * block per row, one kernel with a mode) and groupnorm (+SiLU). */
#ifndef MM_CUDA_NORM_CUH
#define MM_CUDA_NORM_CUH

#include "cuda_common.cuh"

mm_status mm_cuda_rmsnorm(mm_backend *be, const float *x, const float *w, float *y, int64_t M, int64_t D, float eps);
mm_status mm_cuda_layernorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t M,
                            int64_t D, float eps);
mm_status mm_cuda_l2norm(mm_backend *be, const float *x, float *y, int64_t M, int64_t D, float eps);
mm_status mm_cuda_softmax(mm_backend *be, const float *x, float *y, int64_t M, int64_t N);
mm_status mm_cuda_groupnorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t B,
                            int64_t HW, int64_t C, int32_t groups, float eps, int silu);

#endif
