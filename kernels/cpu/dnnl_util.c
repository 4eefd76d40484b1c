/* See dnnl_util.h. */
#include "dnnl_util.h"

#include <stdlib.h>

mm_status mm_dnnl_cpu_new(size_t size, int n_threads, void **out) {
    mm_dnnl_cpu *c = calloc(1, size);
    CHECK(CHECK_ALLOC(c));
    c->n_threads = n_threads;
    if (dnnl_engine_create(&c->engine, dnnl_cpu, 0) != dnnl_success) {
        free(c);
        return MM_ERROR(MM_ERR_INTERNAL, "oneDNN CPU engine creation failed");
    }
    if (dnnl_stream_create(&c->stream, c->engine, dnnl_stream_default_flags) != dnnl_success) {
        dnnl_engine_destroy(c->engine);
        free(c);
        return MM_ERROR(MM_ERR_INTERNAL, "oneDNN CPU stream creation failed");
    }
    *out = c;
    return MM_OK;
}

void mm_dnnl_cpu_close(mm_dnnl_cpu *c) {
    if (c->stream) dnnl_stream_destroy(c->stream);
    if (c->engine) dnnl_engine_destroy(c->engine);
}

mm_status mm_dnnl_pack_weights(const mm_dnnl_cpu *c, dnnl_primitive_desc_t pd, const dnnl_memory_desc_t *plain_md,
                               const void *plain, const char *what, void **packed, void **desc) {
    dnnl_memory_desc_t *md = malloc(sizeof *md);
    if (!md) {
        dnnl_primitive_desc_destroy(pd);
        return MM_ERROR(MM_ERR_NOMEM, "%spack desc", what);
    }
    *md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    size_t bytes = dnnl_memory_desc_get_size(md);
    void *buf = NULL;
    if (posix_memalign(&buf, 64, (bytes + 63) & ~(size_t)63) != 0) {
        free(md);
        return MM_ERROR(MM_ERR_NOMEM, "packed %sweight of %zu bytes", what, bytes);
    }
    dnnl_memory_t src = NULL, dst = NULL;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_status_t s = dnnl_memory_create(&src, plain_md, c->engine, (void *)plain);
    if (s == dnnl_success) s = dnnl_memory_create(&dst, md, c->engine, buf);
    if (s == dnnl_success) s = dnnl_reorder_primitive_desc_create(&rpd, plain_md, c->engine, md, c->engine, NULL);
    if (s == dnnl_success) s = dnnl_primitive_create(&reorder, rpd);
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
        s = dnnl_primitive_execute(reorder, c->stream, 2, args);
    }
    if (s == dnnl_success) s = dnnl_stream_wait(c->stream);
    if (reorder) dnnl_primitive_destroy(reorder);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (src) dnnl_memory_destroy(src);
    if (dst) dnnl_memory_destroy(dst);
    if (s != dnnl_success) {
        free(buf), free(md);
        return MM_ERROR(MM_ERR_INTERNAL, "oneDNN %sweight reorder failed (status %d)", what, (int)s);
    }
    *packed = buf, *desc = md;
    return MM_OK;
}
