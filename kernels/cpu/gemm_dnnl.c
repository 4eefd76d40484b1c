/* GEMM for the CPU backend through oneDNN's matmul primitive (AVX-512/AMX kernels,
 * runtime dispatch). Primitives are cached per (M, K, N, weight dtype): creating one
 * costs far more than a decode-sized GEMM. Weights stay in the checkpoint layout
 * [N, K] (oneDNN format tag "ba" on a K x N matrix), so mapped weights are used in
 * place. bf16 weights take bf16 activations: x is rounded to bf16 (f32 accumulation).
 * Not thread-safe: one caller at a time per mm_dnnl. */
#include <dnnl.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "dnnl_util.h"

#define CACHE_SLOTS 512

typedef struct {
    int64_t M, K, N;
    mm_dtype wtype;
    int packed;
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
} gemm_entry;

struct mm_dnnl {
    mm_dnnl_cpu cpu; /* first: see mm_dnnl_cpu_new */
    gemm_entry cache[CACHE_SLOTS];
    uint16_t *xbf16; /* [cap] activations rounded to bf16 */
    size_t xbf16_cap;
};

mm_status mm_dnnl_init(int n_threads, mm_dnnl **out) {
    void *d;
    CHECK(mm_dnnl_cpu_new(sizeof **out, n_threads, &d));
    *out = d;
    return MM_OK;
}

void mm_dnnl_free(mm_dnnl *d) {
    if (!d) return;
    for (int i = 0; i < CACHE_SLOTS; i++) {
        gemm_entry *e = &d->cache[i];
        if (!e->prim) continue;
        dnnl_primitive_destroy(e->prim);
        dnnl_memory_destroy(e->src);
        dnnl_memory_destroy(e->wei);
        dnnl_memory_destroy(e->dst);
    }
    mm_dnnl_cpu_close(&d->cpu);
    free(d->xbf16);
    free(d);
}

/* A matmul primitive desc for y[M,N] = x[M,K] w[K,N]; wei_md NULL: let oneDNN choose. */
static mm_status matmul_pd(mm_dnnl *d, int64_t M, int64_t K, int64_t N, mm_dtype wtype, const dnnl_memory_desc_t *wei_md,
                           dnnl_primitive_desc_t *pd) {
    dnnl_data_type_t t = wtype == MM_DTYPE_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t src_md, any_md, dst_md;
    dnnl_dims_t src_dims = {M, K}, wei_dims = {K, N}, dst_dims = {M, N};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&src_md, 2, src_dims, t, dnnl_ab), "src desc");
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&any_md, 2, wei_dims, t, dnnl_format_tag_any), "weights desc");
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&dst_md, 2, dst_dims, dnnl_f32, dnnl_ab), "dst desc");
    dnnl_matmul_desc_t desc;
    DNNL_CHECK(dnnl_matmul_desc_init(&desc, &src_md, wei_md ? wei_md : &any_md, NULL, &dst_md), "matmul desc");
    DNNL_CHECK(dnnl_primitive_desc_create(pd, &desc, NULL, d->cpu.engine, NULL), "matmul primitive desc");
    return MM_OK;
}

static mm_status entry_create(mm_dnnl *d, gemm_entry *e, int64_t M, int64_t K, int64_t N, mm_dtype wtype,
                              const dnnl_memory_desc_t *packed_md) {
    dnnl_memory_desc_t plain_md;
    dnnl_dims_t wei_dims = {K, N};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&plain_md, 2, wei_dims, wtype == MM_DTYPE_BF16 ? dnnl_bf16 : dnnl_f32, dnnl_ba),
               "weights desc");
    const dnnl_memory_desc_t *wei = packed_md ? packed_md : &plain_md;
    dnnl_primitive_desc_t pd;
    CHECK(matmul_pd(d, M, K, N, wtype, wei, &pd));
    const dnnl_memory_desc_t *src_md = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *wei_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dst_md = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    dnnl_status_t s = dnnl_primitive_create(&e->prim, pd);
    if (s == dnnl_success) s = dnnl_memory_create(&e->src, src_md, d->cpu.engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success) s = dnnl_memory_create(&e->wei, wei_md, d->cpu.engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success) s = dnnl_memory_create(&e->dst, dst_md, d->cpu.engine, DNNL_MEMORY_NONE);
    dnnl_primitive_desc_destroy(pd);
    DNNL_CHECK(s, "matmul primitive and memories");
    e->M = M, e->K = K, e->N = N, e->wtype = wtype, e->packed = packed_md != NULL;
    return MM_OK;
}

static mm_status entry_get(mm_dnnl *d, int64_t M, int64_t K, int64_t N, mm_dtype wtype,
                           const dnnl_memory_desc_t *packed_md, gemm_entry **out) {
    int packed = packed_md != NULL;
    uint64_t h = (uint64_t)M * 0x9E3779B97F4A7C15ull ^ (uint64_t)K * 0xC2B2AE3D27D4EB4Full ^
                 (uint64_t)N * 0x165667B19E3779F9ull ^ (uint64_t)wtype ^ ((uint64_t)packed << 7);
    for (int probe = 0; probe < CACHE_SLOTS; probe++) {
        gemm_entry *e = &d->cache[(h + (uint64_t)probe) % CACHE_SLOTS];
        if (!e->prim) {
            CHECK(entry_create(d, e, M, K, N, wtype, packed_md));
            *out = e;
            return MM_OK;
        }
        if (e->M == M && e->K == K && e->N == N && e->wtype == wtype && e->packed == packed) {
            *out = e;
            return MM_OK;
        }
    }
    return MM_ERROR(MM_ERR_NOMEM, "oneDNN primitive cache full (%d shapes)", CACHE_SLOTS);
}

/* See cpu_ops.h. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void mm_cpu_round_bf16(const float *x, uint16_t *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        uint32_t quiet = (u >> 16) | 0x40u;
        b[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
    }
}

static mm_status to_bf16(mm_dnnl *d, const float *x, size_t n, uint16_t **out) {
    if (n > d->xbf16_cap) {
        uint16_t *p = realloc(d->xbf16, n * sizeof *p);
        CHECK(CHECK_ALLOC(p));
        d->xbf16 = p, d->xbf16_cap = n;
    }
    uint16_t *b = d->xbf16;
    size_t per = 16384;
#pragma omp parallel for num_threads(d->cpu.n_threads) schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i += per) mm_cpu_round_bf16(x + i, b + i, n - i < per ? n - i : per);
    *out = b;
    return MM_OK;
}

mm_status mm_dnnl_matmul(mm_dnnl *d, const mm_tensor *w, const float *x, float *y, int64_t M) {
    int64_t N = w->shape[0], K = w->shape[1];
    if (w->dtype != MM_DTYPE_F32 && w->dtype != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "oneDNN matmul: weight dtype %s", mm_dtype_name(w->dtype));
    if (M <= 0) return MM_OK;
    /* oneDNN plans its threading when a primitive is created: set the count first */
    omp_set_num_threads(d->cpu.n_threads);
    const mm_cpu_weight *cw = w->backend_data;
    gemm_entry *e = NULL;
    CHECK(entry_get(d, M, K, N, w->dtype, cw ? cw->packed_desc : NULL, &e));
    const void *src = x;
    if (w->dtype == MM_DTYPE_BF16) {
        uint16_t *xb;
        CHECK(to_bf16(d, x, (size_t)(M * K), &xb));
        src = xb;
    }
    DNNL_CHECK(dnnl_memory_set_data_handle(e->src, (void *)src), "set src");
    DNNL_CHECK(dnnl_memory_set_data_handle(e->wei, w->data), "set weights");
    DNNL_CHECK(dnnl_memory_set_data_handle(e->dst, y), "set dst");
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->wei}, {DNNL_ARG_DST, e->dst}};
    DNNL_CHECK(dnnl_primitive_execute(e->prim, d->cpu.stream, 3, args), "matmul execute");
    DNNL_CHECK(dnnl_stream_wait(d->cpu.stream), "stream wait");
    return MM_OK;
}

mm_status mm_dnnl_pack(mm_dnnl *d, mm_dtype dt, int64_t N, int64_t K, const void *plain, void **packed, void **desc) {
    if (dt != MM_DTYPE_F32 && dt != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "oneDNN pack: dtype %s", mm_dtype_name(dt));
    omp_set_num_threads(d->cpu.n_threads);
    dnnl_memory_desc_t plain_md;
    dnnl_dims_t dims = {K, N};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&plain_md, 2, dims, dt == MM_DTYPE_BF16 ? dnnl_bf16 : dnnl_f32, dnnl_ba),
               "plain weight desc");
    dnnl_primitive_desc_t pd;
    CHECK(matmul_pd(d, 1, K, N, dt, NULL, &pd));
    return mm_dnnl_pack_weights(&d->cpu, pd, &plain_md, plain, "", packed, desc);
}
