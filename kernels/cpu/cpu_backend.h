/* Internal to kernels/cpu: the CPU backends' private context. */
#ifndef MM_CPU_BACKEND_H
#define MM_CPU_BACKEND_H

#include "cpu_ops.h"

typedef struct {
    mm_dnnl *dnnl;    /* NULL for the reference backend */
    mm_dnnl_conv *conv; /* oneDNN convolutions; NULL for the reference backend */
    void *scratch;    /* grows on demand; valid until the next op */
    size_t scratch_cap;
} mm_cpu_ctx_t;

static inline mm_cpu_ctx_t *mm_cpu_ctx(mm_backend *be) { return (mm_cpu_ctx_t *)be->ctx; }

/* backend_data of a weight the CPU backend converted or packed. */
typedef struct {
    void *owned;        /* converted or packed data (NULL when data aliases the mapping) */
    void *packed_desc;  /* oneDNN weights memory desc of a packed matmul/conv weight, else NULL */
} mm_cpu_weight;

/* A scratch buffer of at least `bytes`, owned by the backend. */
mm_status mm_cpu_scratch(mm_backend *be, size_t bytes, void **out);

#endif
