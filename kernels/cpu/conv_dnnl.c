/* 2-D convolution for the fast CPU backend through oneDNN's direct convolution
 * primitive (jit AVX-512/AMX kernels). Activations are f32 channels-last (nhwc), so
 * they are passed in place; weights are reordered once at load into the blocked
 * layout the primitive prefers (mm_dnnl_conv_pack), and the bias is fused.
 * Primitives are cached per shape: creating one costs more than a small convolution.
 * Must not hold model state; not thread-safe (one caller at a time per context). */
#include <dnnl.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "dnnl_util.h"

#define CONV_CACHE_SLOTS 256

typedef struct {
    int64_t B, H, W, IC, OC, k;
    int32_t stride, pad;
    int has_bias, packed;
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, bias, dst;
    /* when the primitive wants another weight layout than the one given (shape-dependent
     * kernel choice), each call reorders the weights into wbuf first */
    dnnl_primitive_t reorder;
    dnnl_memory_t wsrc;
    void *wbuf;
} conv_entry;

struct mm_dnnl_conv {
    mm_dnnl_cpu cpu; /* first: see mm_dnnl_cpu_new */
    conv_entry cache[CONV_CACHE_SLOTS];
};

mm_status mm_dnnl_conv_init(int n_threads, mm_dnnl_conv **out) {
    void *c;
    CHECK(mm_dnnl_cpu_new(sizeof **out, n_threads, &c));
    *out = c;
    return MM_OK;
}

void mm_dnnl_conv_free(mm_dnnl_conv *c) {
    if (!c) return;
    for (int i = 0; i < CONV_CACHE_SLOTS; i++) {
        conv_entry *e = &c->cache[i];
        if (!e->prim) continue;
        dnnl_primitive_destroy(e->prim);
        dnnl_memory_destroy(e->src);
        dnnl_memory_destroy(e->wei);
        if (e->bias) dnnl_memory_destroy(e->bias);
        dnnl_memory_destroy(e->dst);
        if (e->reorder) dnnl_primitive_destroy(e->reorder);
        if (e->wsrc) dnnl_memory_destroy(e->wsrc);
        free(e->wbuf);
    }
    mm_dnnl_cpu_close(&c->cpu);
    free(c);
}

/* Primitive desc of y = conv(x) for the given shape; wei_md NULL: oneDNN picks the layout. */
static mm_status conv_pd(mm_dnnl_conv *c, int64_t B, int64_t H, int64_t W, int64_t IC, int64_t OC, int64_t k,
                         int32_t stride, int32_t pad, int has_bias, const dnnl_memory_desc_t *wei_md,
                         dnnl_primitive_desc_t *pd) {
    int64_t Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    dnnl_memory_desc_t src_md, any_md, bias_md, dst_md;
    dnnl_dims_t src_dims = {B, IC, H, W}, wei_dims = {OC, IC, k, k}, bias_dims = {OC}, dst_dims = {B, OC, Ho, Wo};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&src_md, 4, src_dims, dnnl_f32, dnnl_nhwc), "conv src desc");
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&any_md, 4, wei_dims, dnnl_f32, dnnl_format_tag_any), "conv weights desc");
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&bias_md, 1, bias_dims, dnnl_f32, dnnl_a), "conv bias desc");
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&dst_md, 4, dst_dims, dnnl_f32, dnnl_nhwc), "conv dst desc");
    dnnl_dims_t strides = {stride, stride}, padding = {pad, pad};
    dnnl_convolution_desc_t desc;
    DNNL_CHECK(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct, &src_md,
                                                wei_md ? wei_md : &any_md, has_bias ? &bias_md : NULL, &dst_md,
                                                strides, padding, padding),
             "convolution desc");
    DNNL_CHECK(dnnl_primitive_desc_create(pd, &desc, NULL, c->cpu.engine, NULL), "convolution primitive desc");
    return MM_OK;
}

static mm_status entry_create(mm_dnnl_conv *c, conv_entry *e, const conv_entry *key, const dnnl_memory_desc_t *packed_md) {
    dnnl_memory_desc_t plain_md;
    dnnl_dims_t wei_dims = {key->OC, key->IC, key->k, key->k};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&plain_md, 4, wei_dims, dnnl_f32, dnnl_oihw), "conv weights desc");
    dnnl_primitive_desc_t pd;
    /* weights "any": oneDNN picks its fastest kernel for this shape; forcing the packed
     * layout instead can select a reference kernel (measured 0.4 GFLOP/s) */
    CHECK(conv_pd(c, key->B, key->H, key->W, key->IC, key->OC, key->k, key->stride, key->pad, key->has_bias, NULL, &pd));
    const dnnl_memory_desc_t *given = packed_md ? packed_md : &plain_md;
    *e = *key;
    e->prim = NULL, e->src = e->wei = e->bias = e->dst = NULL, e->reorder = NULL, e->wsrc = NULL, e->wbuf = NULL;
    dnnl_status_t s = dnnl_primitive_create(&e->prim, pd);
    if (s == dnnl_success)
        s = dnnl_memory_create(&e->src, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), c->cpu.engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success)
        s = dnnl_memory_create(&e->wei, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), c->cpu.engine,
                               DNNL_MEMORY_NONE);
    if (s == dnnl_success && key->has_bias)
        s = dnnl_memory_create(&e->bias, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1), c->cpu.engine,
                               DNNL_MEMORY_NONE);
    if (s == dnnl_success)
        s = dnnl_memory_create(&e->dst, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), c->cpu.engine, DNNL_MEMORY_NONE);
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (s == dnnl_success && !dnnl_memory_desc_equal(want, given)) {
        dnnl_primitive_desc_t rpd = NULL;
        size_t bytes = dnnl_memory_desc_get_size(want);
        if (posix_memalign(&e->wbuf, 64, (bytes + 63) & ~(size_t)63) != 0) e->wbuf = NULL, s = dnnl_out_of_memory;
        if (s == dnnl_success) s = dnnl_memory_create(&e->wsrc, given, c->cpu.engine, DNNL_MEMORY_NONE);
        if (s == dnnl_success) s = dnnl_reorder_primitive_desc_create(&rpd, given, c->cpu.engine, want, c->cpu.engine, NULL);
        if (s == dnnl_success) s = dnnl_primitive_create(&e->reorder, rpd);
        if (rpd) dnnl_primitive_desc_destroy(rpd);
        if (s == dnnl_success) s = dnnl_memory_set_data_handle(e->wei, e->wbuf);
    }
    dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success) {
        if (e->prim) dnnl_primitive_destroy(e->prim);
        if (e->src) dnnl_memory_destroy(e->src);
        if (e->wei) dnnl_memory_destroy(e->wei);
        if (e->bias) dnnl_memory_destroy(e->bias);
        if (e->dst) dnnl_memory_destroy(e->dst);
        if (e->reorder) dnnl_primitive_destroy(e->reorder);
        if (e->wsrc) dnnl_memory_destroy(e->wsrc);
        free(e->wbuf);
        memset(e, 0, sizeof *e);
        return MM_ERROR(MM_ERR_INTERNAL, "oneDNN convolution primitive and memories failed (status %d)", (int)s);
    }
    return MM_OK;
}

static int same_key(const conv_entry *a, const conv_entry *b) {
    return a->B == b->B && a->H == b->H && a->W == b->W && a->IC == b->IC && a->OC == b->OC && a->k == b->k &&
           a->stride == b->stride && a->pad == b->pad && a->has_bias == b->has_bias && a->packed == b->packed;
}

static mm_status entry_get(mm_dnnl_conv *c, const conv_entry *key, const dnnl_memory_desc_t *packed_md, conv_entry **out) {
    uint64_t h = (uint64_t)key->B * 0x9E3779B97F4A7C15ull ^ (uint64_t)key->H * 0xC2B2AE3D27D4EB4Full ^
                 (uint64_t)key->W * 0x165667B19E3779F9ull ^ (uint64_t)key->IC * 0x27D4EB2F165667C5ull ^
                 (uint64_t)key->OC * 0x94D049BB133111EBull ^ (uint64_t)(key->k * 16 + key->stride * 4 + key->pad) ^
                 ((uint64_t)key->has_bias << 9) ^ ((uint64_t)key->packed << 10);
    for (int probe = 0; probe < CONV_CACHE_SLOTS; probe++) {
        conv_entry *e = &c->cache[(h + (uint64_t)probe) % CONV_CACHE_SLOTS];
        if (!e->prim) {
            CHECK(entry_create(c, e, key, packed_md));
            *out = e;
            return MM_OK;
        }
        if (same_key(e, key)) {
            *out = e;
            return MM_OK;
        }
    }
    return MM_ERROR(MM_ERR_NOMEM, "oneDNN convolution cache full (%d shapes)", CONV_CACHE_SLOTS);
}

mm_status mm_dnnl_conv2d(mm_dnnl_conv *c, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                         int64_t H, int64_t W, int32_t stride, int32_t pad) {
    if (w->dtype != MM_DTYPE_F32 || w->ndim != 4 || w->shape[2] != w->shape[3])
        return MM_ERROR(MM_ERR_UNSUPPORTED, "oneDNN conv2d: weight must be f32 [OC, IC, k, k]");
    if (B <= 0) return MM_OK;
    omp_set_num_threads(c->cpu.n_threads); /* oneDNN plans its threading at primitive creation */
    const mm_cpu_weight *cw = w->backend_data;
    const dnnl_memory_desc_t *packed_md = cw ? cw->packed_desc : NULL;
    conv_entry key = {.B = B, .H = H, .W = W, .IC = w->shape[1], .OC = w->shape[0], .k = w->shape[2],
                      .stride = stride, .pad = pad, .has_bias = bias != NULL, .packed = packed_md != NULL};
    conv_entry *e = NULL;
    CHECK(entry_get(c, &key, packed_md, &e));
    DNNL_CHECK(dnnl_memory_set_data_handle(e->src, (void *)x), "set conv src");
    if (e->reorder) {
        DNNL_CHECK(dnnl_memory_set_data_handle(e->wsrc, w->data), "set conv weights");
        dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, e->wsrc}, {DNNL_ARG_TO, e->wei}};
        DNNL_CHECK(dnnl_primitive_execute(e->reorder, c->cpu.stream, 2, rargs), "conv weight reorder");
    } else {
        DNNL_CHECK(dnnl_memory_set_data_handle(e->wei, w->data), "set conv weights");
    }
    DNNL_CHECK(dnnl_memory_set_data_handle(e->dst, y), "set conv dst");
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->wei}, {DNNL_ARG_DST, e->dst}};
    int n_args = 3;
    if (bias) {
        DNNL_CHECK(dnnl_memory_set_data_handle(e->bias, (void *)bias), "set conv bias");
        args[n_args++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, e->bias};
    }
    DNNL_CHECK(dnnl_primitive_execute(e->prim, c->cpu.stream, n_args, args), "convolution execute");
    DNNL_CHECK(dnnl_stream_wait(c->cpu.stream), "stream wait");
    return MM_OK;
}

mm_status mm_dnnl_conv_pack(mm_dnnl_conv *c, const int64_t shape[4], const float *plain, void **packed, void **desc) {
    int64_t OC = shape[0], IC = shape[1], k = shape[2];
    if (shape[2] != shape[3]) return MM_ERROR(MM_ERR_UNSUPPORTED, "oneDNN conv pack: kernel %lldx%lld is not square",
                                              (long long)shape[2], (long long)shape[3]);
    omp_set_num_threads(c->cpu.n_threads);
    dnnl_memory_desc_t plain_md;
    dnnl_dims_t dims = {OC, IC, k, k};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&plain_md, 4, dims, dnnl_f32, dnnl_oihw), "plain conv weight desc");
    dnnl_primitive_desc_t pd;
    CHECK(conv_pd(c, 2, 32, 32, IC, OC, k, 1, (int32_t)(k / 2), 1, NULL, &pd));
    return mm_dnnl_pack_weights(&c->cpu, pd, &plain_md, plain, "conv ", packed, desc);
}
