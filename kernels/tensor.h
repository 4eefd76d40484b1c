/* A tensor descriptor: dtype, shape and a data pointer in some backend's memory.
 * Weights keep the checkpoint's layout (nn.Linear: [out_features, in_features],
 * row-major); activations are f32 and row-major. The descriptor never owns data. */
#ifndef MM_TENSOR_H
#define MM_TENSOR_H

#include <stdint.h>

#include "common/dtype.h"

#define MM_TENSOR_MAX_DIMS 4

typedef struct {
    mm_dtype dtype;
    int ndim;
    int64_t shape[MM_TENSOR_MAX_DIMS];
    void *data;    /* backend memory (host for CPU backends, device for CUDA) */
    void *backend_data; /* backend-private (e.g. a packed copy); NULL if none */
    const void *scales; /* dtype I8 (the q8 format, common/q8.h): f16 [shape[0], shape[1]/32]
                         * per-block scales in backend memory; NULL for float tensors */
} mm_tensor;

static inline int64_t mm_tensor_numel(const mm_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

#endif
