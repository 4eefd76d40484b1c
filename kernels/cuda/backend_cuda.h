/* The CUDA backend's entry points. Built when nvcc is found (backend_cuda.cu);
 * otherwise backend_cuda_stub.c answers "no GPUs" / "not built". Any CUDA error
 * during device enumeration (no driver, no device) counts as "no GPU", so CPU-only
 * machines skip cleanly. */
#ifndef MM_BACKEND_CUDA_H
#define MM_BACKEND_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct mm_backend;
/* Number of usable GPUs; 0 (not an error) when there is no driver or device. */
int mm_cuda_device_count(void);
/* A backend on GPU `device` (0-based) with its own stream and cuBLAS handle. */
mm_status mm_backend_cuda_init(int device, struct mm_backend **out);
/* The backend's compute stream (a cudaStream_t), for transports that must order
 * their copies after its kernels; NULL for a non-CUDA backend. */
void *mm_backend_cuda_stream(struct mm_backend *be);
/* Waits for every op enqueued so far (timing, before handing buffers to others). */
mm_status mm_backend_cuda_sync(struct mm_backend *be);

/* ---- device memory planner ---- */
typedef struct {
    size_t total, free;      /* device memory now (cudaMemGetInfo) */
    size_t weights;          /* held by weights this backend loaded */
    size_t allocated;        /* held by alloc() (activations, KV cache) */
    size_t scratch;          /* the backend's own scratch */
} mm_cuda_mem;
mm_status mm_backend_cuda_mem(struct mm_backend *be, mm_cuda_mem *out);
/* KV blocks for the free memory: floor((free * fraction - reserve) / block_bytes),
 * block_bytes = K and V of one block for every layer. Call after the weights are
 * loaded; reserve covers activations and scratch still to come. A clear
 * MM_ERR_NOMEM naming the sizes when not even min_blocks fit. */
mm_status mm_cuda_plan_kv_blocks(struct mm_backend *be, double fraction, size_t reserve, size_t block_bytes,
                                 int32_t min_blocks, int32_t *n_blocks);

/* ---- benchmark baselines (probe.cu) ---- */
/* Device-to-device copy of `bytes`: (read + written) bytes per second, in GB/s. */
mm_status mm_backend_cuda_probe_copy(struct mm_backend *be, size_t bytes, double *gbs);
/* cuBLAS bf16 x bf16 -> f32 GEMM of M x N x K (the matmul op's layout), TFLOP/s. */
mm_status mm_backend_cuda_probe_gemm(struct mm_backend *be, int64_t M, int64_t N, int64_t K, double *tflops);

#ifdef __cplusplus
}
#endif

#endif
