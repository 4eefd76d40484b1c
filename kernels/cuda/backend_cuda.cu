/* CUDA backend (device discovery only until the CUDA backend issue lands): treats any
 * CUDA error from device enumeration as "no GPU", so CPU-only machines skip cleanly. */
#include <cuda_runtime.h>

#include "backend_cuda.h"

extern "C" int mm_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error */
        return 0;
    }
    return n;
}

extern "C" mm_status mm_backend_cuda_init(int device, struct mm_backend **out) {
    int n = mm_cuda_device_count();
    if (n == 0) return MM_ERROR(MM_ERR_UNSUPPORTED, "CUDA backend: no GPU found");
    if (device < 0 || device >= n) return MM_ERROR(MM_ERR_INVALID, "CUDA device %d of %d", device, n);
    return MM_ERROR(MM_ERR_UNSUPPORTED, "CUDA backend ops are not implemented yet");
}
