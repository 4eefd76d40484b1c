/* Internal to kernels/cpu: what the oneDNN wrappers (gemm_dnnl.c, conv_dnnl.c) share: the
 * error macro, the engine and stream each context starts with, and the one-time reorder
 * of weights into the layout a primitive prefers. */
#ifndef MM_DNNL_UTIL_H
#define MM_DNNL_UTIL_H

#include <dnnl.h>
#include <stddef.h>

#include "common/status.h"

/* Return an MM_ERR_INTERNAL naming the failed oneDNN step. */
#define DNNL_CHECK(call, what)                                                                     \
    do {                                                                                           \
        dnnl_status_t dnnl_s_ = (call);                                                            \
        if (dnnl_s_ != dnnl_success)                                                               \
            return MM_ERROR(MM_ERR_INTERNAL, "oneDNN %s failed (status %d)", what, (int)dnnl_s_);  \
    } while (0)

/* The first member of every oneDNN context: a CPU engine, an in-order stream on it, and
 * the OpenMP threads its primitives are planned and run with. */
typedef struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int n_threads;
} mm_dnnl_cpu;

/* A zeroed context of size bytes (an mm_dnnl_cpu first) with its engine and stream
 * created; on failure nothing is left allocated. */
mm_status mm_dnnl_cpu_new(size_t size, int n_threads, void **out);
/* Destroys the stream and the engine (not the context). */
void mm_dnnl_cpu_close(mm_dnnl_cpu *c);

/* Weights plain (laid out as plain_md) reordered into the layout of pd's weights:
 * *packed (64-byte aligned) and *desc (a malloc'd dnnl_memory_desc_t), both freed with
 * free(). pd is destroyed in every case. what ("", "conv ") prefixes "weight" in errors. */
mm_status mm_dnnl_pack_weights(const mm_dnnl_cpu *c, dnnl_primitive_desc_t pd, const dnnl_memory_desc_t *plain_md,
                               const void *plain, const char *what, void **packed, void **desc);

#endif
