/* Built instead of backend_cuda.cu when CUDA is off: there are no GPUs. */
#include "backend_cuda.h"

int mm_cuda_device_count(void) { return 0; }

mm_status mm_backend_cuda_init(int device, struct mm_backend **out) {
    return MM_ERROR(MM_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with MM_CUDA=ON)");
}
