/* Internal to kernels/cuda: the CUDA backend's private context, the error macros every
 * CUDA/cuBLAS call goes through (file:line in the message, never calls exit), and the two
 * helpers ops share: a growable device scratch and a ring that uploads small host-side
 * row metadata (token ids, positions, KV slots, block tables) in stream order.
 * Must not hold model knowledge: ops only. */
#ifndef MM_CUDA_COMMON_CUH
#define MM_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "kernels/backend.h"
}
#include "kernels/cuda/cuda_check.h"

/* CUDA_CHECK: cuda_check.h. CUBLAS_CHECK likewise records the call and returns. */
#define CUBLAS_CHECK(x)                                                                            \
    do {                                                                                           \
        cublasStatus_t cublas_e_ = (x);                                                            \
        if (cublas_e_ != CUBLAS_STATUS_SUCCESS)                                                    \
            return MM_ERROR(MM_ERR_INTERNAL, "cuBLAS %s: %s", #x, cublasGetStatusString(cublas_e_)); \
    } while (0)
/* After a kernel launch: launch-configuration errors surface here. */
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

typedef struct {
    int device;
    int sm_count;
    cudaStream_t stream;    /* every op runs on it, in order */
    cublasHandle_t cublas;  /* bound to stream */
    void *scratch;          /* device, grows; valid until the next op */
    size_t scratch_cap;
    char *meta_host;        /* pinned [meta_cap] staging of host metadata */
    char *meta_dev;         /* device [meta_cap], same offsets */
    size_t meta_cap, meta_used;
    char *out_host;         /* pinned [out_cap] for small results read back (sampled ids) */
    size_t out_cap;
    size_t weight_bytes;    /* device bytes held by loaded weights (for the planner) */
    size_t alloc_bytes;     /* device bytes held by alloc() (activations, KV cache) */
} mm_cuda_ctx;

static inline mm_cuda_ctx *mm_cuda_ctx_of(mm_backend *be) { return (mm_cuda_ctx *)be->ctx; }

/* A device scratch buffer of at least `bytes` (one per backend; ops use it within one call). */
mm_status mm_cuda_scratch(mm_backend *be, size_t bytes, void **out);
/* Copies bytes of host memory into the metadata ring and enqueues its upload on the
 * stream; *dev is valid for kernels enqueued after it. The host copy may be reused
 * at once. */
mm_status mm_cuda_meta(mm_backend *be, const void *host, size_t bytes, void **dev);
/* The same in two steps, for metadata built in place: reserve ring space (*host is
 * pinned, fill it), then mm_cuda_meta_push enqueues its upload. */
mm_status mm_cuda_meta_alloc(mm_backend *be, size_t bytes, void **host, void **dev);
mm_status mm_cuda_meta_push(mm_backend *be, const void *host, void *dev, size_t bytes);

static inline unsigned mm_cuda_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > 65535LL * 16 ? 65535LL * 16 : b); /* kernels grid-stride */
}

/* Element i of a float tensor of dtype F32/BF16/F16, as f32. */
__device__ __forceinline__ float mm_cuda_load(const void *p, mm_dtype dt, int64_t i) {
    if (dt == MM_DTYPE_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == MM_DTYPE_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

/* Sum over a block (blockDim.x a multiple of 32, <= 1024); every thread gets the result. */
template <typename T> __device__ __forceinline__ T mm_cuda_block_sum(T v) {
    __shared__ T part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); /* part may still be read by a previous call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    T s = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += part[w]; /* fixed order */
    return s;
}

#endif
