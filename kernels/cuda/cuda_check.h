/* CUDA_CHECK: every CUDA runtime call goes through it, in the CUDA backend (.cu, C++) and
 * in the NCCL transport of the stages (C). Records "file:line: CUDA <call>: <reason>"
 * (an allocation failure as MM_ERR_NOMEM, anything else as MM_ERR_INTERNAL) and returns
 * it from the enclosing function; never exits. */
#ifndef MM_CUDA_CHECK_H
#define MM_CUDA_CHECK_H

#include <cuda_runtime.h>

#include "common/status.h"

#define CUDA_CHECK(x)                                                                              \
    do {                                                                                           \
        cudaError_t cuda_e_ = (x);                                                                 \
        if (cuda_e_ != cudaSuccess)                                                                \
            return MM_ERROR(cuda_e_ == cudaErrorMemoryAllocation ? MM_ERR_NOMEM : MM_ERR_INTERNAL, \
                            "CUDA %s: %s", #x, cudaGetErrorString(cuda_e_));                        \
    } while (0)

#endif
