/* GEMM-shaped ops of the CUDA backend: matmul (cuBLAS, bf16/f16 weights with f32
 * accumulation, or f32) and conv2d (im2col + the same GEMM). */
#ifndef MM_CUDA_GEMM_CUH
#define MM_CUDA_GEMM_CUH

#include "cuda_common.cuh"

mm_status mm_cuda_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M);
mm_status mm_cuda_conv2d(mm_backend *be, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                         int64_t H, int64_t W, int32_t stride, int32_t pad);
/* conv weights as the CUDA conv2d reads them: [OC, IC, k, k] f32 -> [OC, k, k, IC] f32
 * (one im2col row per output pixel, channels innermost), on the host. */
void mm_cuda_conv_weight_pack(const float *src, int64_t OC, int64_t IC, int64_t k, float *dst);

#endif
