/* Built instead of backend_cuda.cu when CUDA is off: there are no GPUs. */
#include "backend_cuda.h"

int mm_cuda_device_count(void) { return 0; }

mm_status mm_backend_cuda_init(int device, struct mm_backend **out) {
    return MM_ERROR(MM_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with MM_CUDA=ON)");
}

void *mm_backend_cuda_stream(struct mm_backend *be) { return NULL; }

mm_status mm_backend_cuda_sync(struct mm_backend *be) { return MM_OK; }

mm_status mm_backend_cuda_mem(struct mm_backend *be, mm_cuda_mem *out) {
    return MM_ERROR(MM_ERR_UNSUPPORTED, "this build has no CUDA backend");
}

mm_status mm_cuda_plan_kv_blocks(struct mm_backend *be, double fraction, size_t reserve, size_t block_bytes,
                                 int32_t min_blocks, int32_t *n_blocks) {
    return MM_ERROR(MM_ERR_UNSUPPORTED, "this build has no CUDA backend");
}

mm_status mm_backend_cuda_probe_copy(struct mm_backend *be, size_t bytes, double *gbs) {
    return MM_ERROR(MM_ERR_UNSUPPORTED, "this build has no CUDA backend");
}

mm_status mm_backend_cuda_probe_gemm(struct mm_backend *be, int64_t M, int64_t N, int64_t K, double *tflops) {
    return MM_ERROR(MM_ERR_UNSUPPORTED, "this build has no CUDA backend");
}
