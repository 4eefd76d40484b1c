/* The CUDA backend's entry points. Built when nvcc is found; otherwise a stub says
 * "not built". Its ops arrive with the CUDA backend issue; for now it only finds
 * devices, so that the build, link and skip logic are exercised everywhere. */
#ifndef MM_BACKEND_CUDA_H
#define MM_BACKEND_CUDA_H

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct mm_backend;
/* Number of usable GPUs; 0 (not an error) when there is no driver or device. */
int mm_cuda_device_count(void);
mm_status mm_backend_cuda_init(int device, struct mm_backend **out);

#ifdef __cplusplus
}
#endif

#endif
