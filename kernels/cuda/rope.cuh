/* Rotary position embedding on the GPU (rotate-half, HF LLaMA); the llama3/linear
 * scaled inv_freq comes from the model (host array, uploaded per call). */
#ifndef MM_CUDA_ROPE_CUH
#define MM_CUDA_ROPE_CUH

#include "cuda_common.cuh"

/* pos [M] and inv_freq [head_dim/2] are host memory. */
mm_status mm_cuda_rope(mm_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t M,
                       int32_t n_heads, int32_t head_dim);

#endif
