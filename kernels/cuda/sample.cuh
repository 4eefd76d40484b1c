/* Token selection on the GPU: greedy argmax (lowest id wins ties), temperature
 * sampling, top-k / top-p, with the CPU backend's per-row generators and maths. */
#ifndef MM_CUDA_SAMPLE_CUH
#define MM_CUDA_SAMPLE_CUH

#include "cuda_common.cuh"

/* logits [M, V] device; params, rng and out host (as mm_backend_ops.sample). */
mm_status mm_cuda_sample(mm_backend *be, const float *logits, int64_t M, int64_t V, const mm_sampling *params,
                         uint64_t *rng, int32_t *out);

#endif
