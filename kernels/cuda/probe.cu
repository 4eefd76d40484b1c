/* Benchmark baselines measured on the backend's own stream: a device-to-device copy
 * (bytes read + written per second, the practical HBM ceiling a weight-streaming
 * decode is compared with) and a plain cuBLAS bf16 GEMM with f32 accumulation (the
 * practical compute ceiling for prefill). Not used by serving. */
#include "backend_cuda.h"
#include "cuda_common.cuh"

#include <stdlib.h>

static int cmp_f(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* median milliseconds of reps timed runs of fn (after one warm-up) */
template <typename F> static mm_status time_ms(cudaStream_t st, int reps, F fn, float *ms) {
    cudaEvent_t a, b;
    float t[32];
    if (reps > 32) reps = 32;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    mm_status s = fn();
    for (int r = 0; r < reps && s == MM_OK; r++) {
        cudaEventRecord(a, st);
        s = fn();
        cudaEventRecord(b, st);
        cudaEventSynchronize(b);
        cudaEventElapsedTime(&t[r], a, b);
    }
    cudaEventDestroy(a), cudaEventDestroy(b);
    if (s != MM_OK) return s;
    qsort(t, (size_t)reps, sizeof *t, cmp_f);
    *ms = t[reps / 2];
    return MM_OK;
}

extern "C" mm_status mm_backend_cuda_probe_copy(mm_backend *be, size_t bytes, double *gbs) {
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    void *src = NULL, *dst = NULL;
    CUDA_CHECK(cudaMalloc(&src, bytes));
    cudaError_t e = cudaMalloc(&dst, bytes);
    if (e != cudaSuccess) {
        cudaFree(src);
        return MM_ERROR(MM_ERR_NOMEM, "copy probe: 2 x %zu bytes: %s", bytes, cudaGetErrorString(e));
    }
    float ms = 0;
    mm_status s = time_ms(c->stream, 9, [&]() -> mm_status {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
        return MM_OK;
    }, &ms);
    cudaFree(src), cudaFree(dst);
    if (s == MM_OK) *gbs = 2.0 * (double)bytes / (ms * 1e-3) * 1e-9;
    return s;
}

extern "C" mm_status mm_backend_cuda_probe_gemm(mm_backend *be, int64_t M, int64_t N, int64_t K, double *tflops) {
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    void *a = NULL, *b = NULL, *y = NULL;
    CUDA_CHECK(cudaMalloc(&a, (size_t)(N * K) * 2));
    CUDA_CHECK(cudaMalloc(&b, (size_t)(M * K) * 2));
    CUDA_CHECK(cudaMalloc(&y, (size_t)(M * N) * 4));
    CUDA_CHECK(cudaMemsetAsync(a, 0, (size_t)(N * K) * 2, c->stream));
    CUDA_CHECK(cudaMemsetAsync(b, 0, (size_t)(M * K) * 2, c->stream));
    const float one = 1.0f, zero = 0.0f;
    float ms = 0;
    mm_status s = time_ms(c->stream, 9, [&]() -> mm_status {
        CUBLAS_CHECK(cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, a, CUDA_R_16BF,
                                  (int)K, b, CUDA_R_16BF, (int)K, &zero, y, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
        return MM_OK;
    }, &ms);
    cudaFree(a), cudaFree(b), cudaFree(y);
    if (s == MM_OK) *tflops = 2.0 * (double)M * N * K / (ms * 1e-3) * 1e-12;
    return s;
}
