/* Internal to kernels/cpu: what the oneDNN wrappers (gemm_dnnl.c, conv_dnnl.c) share. */
#ifndef MM_DNNL_UTIL_H
#define MM_DNNL_UTIL_H

#include <dnnl.h>

#include "common/status.h"

/* Return an MM_ERR_INTERNAL naming the failed oneDNN step. */
#define DNNL_CHECK(call, what)                                                                     \
    do {                                                                                           \
        dnnl_status_t dnnl_s_ = (call);                                                            \
        if (dnnl_s_ != dnnl_success)                                                               \
            return MM_ERROR(MM_ERR_INTERNAL, "oneDNN %s failed (status %d)", what, (int)dnnl_s_);  \
    } while (0)

/* A CPU engine and an in-order stream on it; on failure nothing is left created. */
static inline mm_status mm_dnnl_cpu_engine(dnnl_engine_t *engine, dnnl_stream_t *stream) {
    *engine = NULL, *stream = NULL;
    if (dnnl_engine_create(engine, dnnl_cpu, 0) != dnnl_success) {
        *engine = NULL;
        return MM_ERROR(MM_ERR_INTERNAL, "oneDNN CPU engine creation failed");
    }
    if (dnnl_stream_create(stream, *engine, dnnl_stream_default_flags) != dnnl_success) {
        dnnl_engine_destroy(*engine);
        *engine = NULL, *stream = NULL;
        return MM_ERROR(MM_ERR_INTERNAL, "oneDNN CPU stream creation failed");
    }
    return MM_OK;
}

#endif
