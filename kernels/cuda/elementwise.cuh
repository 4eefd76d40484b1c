/* Pointwise and copy-shaped ops of the CUDA backend, all one parameterised kernel:
 * silu_mul, add, add_bias, gelu, activation, geglu, concat_cols, upsample_nearest2x. */
#ifndef MM_CUDA_ELEMENTWISE_CUH
#define MM_CUDA_ELEMENTWISE_CUH

#include "cuda_common.cuh"

mm_status mm_cuda_silu_mul(mm_backend *be, float *gate, const float *up, int64_t n);
mm_status mm_cuda_add(mm_backend *be, float *y, const float *x, int64_t n);
mm_status mm_cuda_add_bias(mm_backend *be, float *y, const float *bias, int64_t M, int64_t N);
mm_status mm_cuda_gelu(mm_backend *be, float *x, int64_t n, int tanh_approx);
mm_status mm_cuda_activation(mm_backend *be, float *x, int64_t n, mm_activation act);
mm_status mm_cuda_geglu(mm_backend *be, const float *x, float *y, int64_t M, int64_t F);
mm_status mm_cuda_concat_cols(mm_backend *be, const float *a, const float *b, float *y, int64_t M, int64_t Na,
                              int64_t Nb);
mm_status mm_cuda_upsample_nearest2x(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                     int64_t C);

#endif
