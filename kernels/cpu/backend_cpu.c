/* The two CPU backends, "cpu-ref" (reference loops) and "cpu" (fast paths), and what
 * they share: host memory, weight preparation, KV stores, sampling. */
#include <stdlib.h>
#include <string.h>

#include "common/q8.h"
#include "cpu_backend.h"

void *mm_cpu_alloc(mm_backend *be, size_t bytes) {
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) return NULL;
    return p;
}

void mm_cpu_dealloc(mm_backend *be, void *p) { free(p); }

mm_status mm_cpu_copy(mm_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
    return MM_OK;
}

mm_status mm_cpu_scratch(mm_backend *be, size_t bytes, void **out) {
    mm_cpu_ctx_t *c = mm_cpu_ctx(be);
    if (bytes > c->scratch_cap) {
        void *p = mm_cpu_alloc(be, bytes);
        CHECK(CHECK_ALLOC(p));
        free(c->scratch);
        c->scratch = p, c->scratch_cap = bytes;
    }
    *out = c->scratch;
    return MM_OK;
}

static void weight_release(mm_backend *be, mm_tensor *t) {
    mm_cpu_weight *cw = t->backend_data;
    if (cw) {
        free(cw->owned);
        free(cw->packed_desc);
        free(cw);
    }
    memset(t, 0, sizeof *t);
}

/* Matmul weights: the fast backend packs f32/bf16 (f16 first widened to f32) into
 * oneDNN's blocked layout; the reference backend reads the mapping as is. Tables alias
 * the mapping (f16 widened to f32). Vectors are always an f32 copy. */
static mm_status weight_load(mm_backend *be, const mm_st_tensor *src, mm_weight_use use, mm_tensor *out) {
    if (!mm_dtype_is_float(src->dtype))
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", src->file,
                        src->name, mm_dtype_name(src->dtype));
    int want_ndim = use == MM_WEIGHT_VECTOR ? 1 : use == MM_WEIGHT_CONV ? 4 : 2;
    if (src->ndim != want_ndim)
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' has %d dims, expected %d", src->file, src->name, src->ndim, want_ndim);
    memset(out, 0, sizeof *out);
    out->ndim = src->ndim;
    for (int i = 0; i < src->ndim; i++) out->shape[i] = src->shape[i];
    out->dtype = src->dtype;
    out->data = (void *)src->data;
    mm_dnnl *dnnl = mm_cpu_ctx(be)->dnnl;
    mm_dnnl_conv *conv = mm_cpu_ctx(be)->conv;
    int widen = src->dtype == MM_DTYPE_F16 ||
                ((use == MM_WEIGHT_VECTOR || use == MM_WEIGHT_CONV) && src->dtype != MM_DTYPE_F32);
    int pack = (use == MM_WEIGHT_MATMUL && dnnl != NULL) || (use == MM_WEIGHT_CONV && conv != NULL);
    if (!widen && !pack) return MM_OK;
    mm_cpu_weight *cw = calloc(1, sizeof *cw);
    CHECK(CHECK_ALLOC(cw));
    out->backend_data = cw;
    if (widen) {
        float *f = mm_cpu_alloc(be, (size_t)src->numel * sizeof(float));
        if (!f) {
            weight_release(be, out);
            return MM_ERROR(MM_ERR_NOMEM, "%s: tensor '%s' as f32", src->file, src->name);
        }
        for (int64_t i = 0; i < src->numel; i++) f[i] = mm_cpu_load_elem(src->dtype, src->data, i);
        out->dtype = MM_DTYPE_F32;
        out->data = cw->owned = f;
    }
    if (pack) {
        void *packed = NULL;
        mm_status s = use == MM_WEIGHT_CONV
                          ? mm_dnnl_conv_pack(conv, out->shape, out->data, &packed, &cw->packed_desc)
                          : mm_dnnl_pack(dnnl, out->dtype, out->shape[0], out->shape[1], out->data, &packed, &cw->packed_desc);
        if (s != MM_OK) {
            weight_release(be, out);
            return s;
        }
        free(cw->owned);
        out->data = cw->owned = packed;
    }
    return MM_OK;
}

/* q8 weights alias the mapping as they are (the kernels read I8 rows and f16 scales);
 * only the shapes are checked here. */
static mm_status weight_load_q8(mm_backend *be, const mm_st_tensor *w, const mm_st_tensor *scales, mm_tensor *out) {
    if (w->dtype != MM_DTYPE_I8 || w->ndim != 2 || w->shape[1] % MM_Q8_BLOCK)
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' is %s with %d dims, expected I8 [N, K] with K a multiple of %d",
                        w->file, w->name, mm_dtype_name(w->dtype), w->ndim, MM_Q8_BLOCK);
    if (scales->dtype != MM_DTYPE_F16 || scales->ndim != 2 || scales->shape[0] != w->shape[0] ||
        scales->shape[1] != w->shape[1] / MM_Q8_BLOCK)
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' must be F16 [%lld, %lld] (one scale per %d weights of '%s')",
                        scales->file, scales->name, (long long)w->shape[0], (long long)(w->shape[1] / MM_Q8_BLOCK),
                        MM_Q8_BLOCK, w->name);
    memset(out, 0, sizeof *out);
    out->dtype = MM_DTYPE_I8, out->ndim = 2;
    out->shape[0] = w->shape[0], out->shape[1] = w->shape[1];
    out->data = (void *)w->data;
    out->scales = scales->data;
    return MM_OK;
}

/* Copies (f32 cache) or rounds to bf16 (bf16 cache) one head row of n values. */
static void kv_put(void *cache, int64_t at, mm_dtype dt, const float *src, int32_t n) {
    if (dt == MM_DTYPE_BF16)
        mm_cpu_round_bf16(src, (uint16_t *)cache + at, (size_t)n);
    else
        memcpy((float *)cache + at, src, (size_t)n * sizeof(float));
}

mm_status mm_cpu_kv_store(mm_backend *be, void *k_cache, void *v_cache, const float *k, const float *v,
                          const int32_t *slots, int64_t M, const mm_attn_shape *s) {
    if (s->kv_dtype != MM_DTYPE_F32 && s->kv_dtype != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "KV cache dtype %s", mm_dtype_name(s->kv_dtype));
    /* rows go to distinct slots: threads write disjoint head rows */
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * s->n_kv_heads * s->head_dim > 32768)
    for (int64_t m = 0; m < M; m++) {
        int32_t block = slots[m] / s->block_size, j = slots[m] % s->block_size;
        for (int32_t h = 0; h < s->n_kv_heads; h++) {
            int64_t dst = mm_kv_offset(&block, j, h, s), src = (m * s->n_kv_heads + h) * s->head_dim;
            kv_put(k_cache, dst, s->kv_dtype, k + src, s->head_dim);
            kv_put(v_cache, dst, s->kv_dtype, v + src, s->head_dim);
        }
    }
    return MM_OK;
}

static void cpu_free(mm_backend *be) {
    if (!be) return;
    mm_cpu_ctx_t *c = mm_cpu_ctx(be);
    if (c) {
        mm_dnnl_free(c->dnnl);
        mm_dnnl_conv_free(c->conv);
        free(c->scratch);
        free(c);
    }
    free(be);
}

#define MM_CPU_OPS_TABLE(prefix, label)                                                     \
    {                                                                                              \
        .name = label, .free = cpu_free, .alloc = mm_cpu_alloc, .dealloc = mm_cpu_dealloc,         \
        .upload = mm_cpu_copy, .download = mm_cpu_copy, .copy = mm_cpu_copy, .weight_load = weight_load,                      \
        .weight_load_q8 = weight_load_q8,                                                         \
        .weight_release = weight_release, .embed = prefix##_embed, .matmul = prefix##_matmul,      \
        .rmsnorm = prefix##_rmsnorm, .rope = prefix##_rope, .kv_store = mm_cpu_kv_store,           \
        .attention = prefix##_attention, .silu_mul = prefix##_silu_mul, .add = prefix##_add,       \
        .softmax = prefix##_softmax, .layernorm = prefix##_layernorm, .add_bias = prefix##_add_bias, \
        .gelu = prefix##_gelu, .l2norm = prefix##_l2norm, .attention_dense = prefix##_attention_dense, \
        .patchify = prefix##_patchify, .resize_bilinear = prefix##_resize_bilinear,                \
        .sample = mm_cpu_sample, .conv2d = prefix##_conv2d, .groupnorm = prefix##_groupnorm,        \
        .upsample_nearest2x = prefix##_upsample_nearest2x, .activation = prefix##_activation,      \
        .geglu = prefix##_geglu, .concat_cols = prefix##_concat_cols,                              \
    }

static const mm_backend_ops cpu_ref_ops = MM_CPU_OPS_TABLE(mm_cpu_ref, "cpu-ref");
static const mm_backend_ops cpu_fast_ops = MM_CPU_OPS_TABLE(mm_cpu_fast, "cpu");

static mm_status cpu_create(const mm_backend_ops *ops, int n_threads, mm_backend **out) {
    mm_backend *be = calloc(1, sizeof *be);
    CHECK(CHECK_ALLOC(be));
    be->ops = ops;
    be->n_threads = n_threads;
    be->ctx = calloc(1, sizeof(mm_cpu_ctx_t));
    if (!be->ctx) {
        free(be);
        return MM_ERROR(MM_ERR_NOMEM, "CPU backend context");
    }
    *out = be;
    return MM_OK;
}

mm_status mm_backend_cpu_ref_init(mm_backend **out) { return cpu_create(&cpu_ref_ops, 1, out); }

mm_status mm_backend_cpu_init(int n_threads, mm_backend **out) {
    mm_backend *be = NULL;
    CHECK(cpu_create(&cpu_fast_ops, n_threads, &be));
    /* dnnl stays NULL where gemm_rows.c computes the matmuls (weights then stay unpacked) */
    mm_status s = mm_cpu_gemm_uses_dnnl() ? mm_dnnl_init(n_threads, &mm_cpu_ctx(be)->dnnl) : MM_OK;
    if (s == MM_OK) s = mm_dnnl_conv_init(n_threads, &mm_cpu_ctx(be)->conv);
    if (s != MM_OK) {
        cpu_free(be);
        return s;
    }
    *out = be;
    return MM_OK;
}
