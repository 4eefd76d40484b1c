/* Every op of the CUDA backend against the reference CPU backend (the truth), in the
 * manner of llama.cpp's test-backend-ops: random inputs of many shapes (odd sizes,
 * long contexts split over several key chunks, shuffled block tables, GQA, f32 and
 * bf16 caches and weights), a normalised-MSE bound per op, any NaN/Inf a failure.
 * Exits 77 (ctest SKIP_RETURN_CODE) when there is no GPU; prints one line per case. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"
#include "common/crash.h"
#include "tests/testutil.h"

static mm_backend *ref, *gpu;
static uint64_t rng_state = 42;

static float frand(void) { return mm_rng_uniform(&rng_state) * 2.0f - 1.0f; }

static float *rand_vec(int64_t n, float scale) {
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = frand() * scale;
    return x;
}

/* device copy of n host floats */
static float *dev(const float *h, int64_t n) {
    float *d = gpu->ops->alloc(gpu, (size_t)(n > 0 ? n : 1) * sizeof(float));
    if (d && n > 0) gpu->ops->upload(gpu, d, h, (size_t)n * sizeof(float));
    return d;
}

static float *host(const float *d, int64_t n) {
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (n > 0 && gpu->ops->download(gpu, h, d, (size_t)n * sizeof(float)) != MM_OK) fprintf(stderr, "%s\n", mm_error_last());
    return h;
}

/* got (device) against want by normalised MSE; a non-finite value makes it infinite */
static void check(const char *op, const char *shape, const float *got_dev, const float *want, int64_t n, double bound) {
    float *got = host(got_dev, n);
    double e = mm_nmse(got, want, n);
    printf("%-18s %-34s NMSE %.3g (bound %.1g)\n", op, shape, e, bound);
    EXPECT(e <= bound, "%s %s: NMSE %g > %g (inf: non-finite output)", op, shape, e, bound);
    free(got);
}

/* a weight tensor in dtype dt on both backends (the source must outlive them) */
typedef struct {
    void *data;
    mm_st_tensor st;
    mm_tensor r, g;
} weight;

static void weight_make(weight *w, mm_dtype dt, int ndim, const int64_t *shape, mm_weight_use use, float scale) {
    memset(w, 0, sizeof *w);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i], w->st.shape[i] = shape[i];
    w->data = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) {
        float v = frand() * scale;
        if (dt == MM_DTYPE_F32) ((float *)w->data)[i] = v;
        else ((uint16_t *)w->data)[i] = dt == MM_DTYPE_BF16 ? mm_f32_to_bf16(v) : mm_f32_to_f16(v);
    }
    w->st.name = "w", w->st.file = "test", w->st.dtype = dt, w->st.ndim = ndim, w->st.numel = n;
    w->st.data = w->data, w->st.nbytes = (size_t)n * mm_dtype_size(dt);
    EXPECT(ref->ops->weight_load(ref, &w->st, use, &w->r) == MM_OK, "%s", mm_error_last());
    EXPECT(gpu->ops->weight_load(gpu, &w->st, use, &w->g) == MM_OK, "%s", mm_error_last());
}

static void weight_free(weight *w) {
    ref->ops->weight_release(ref, &w->r);
    gpu->ops->weight_release(gpu, &w->g);
    free(w->data);
}

static void test_matmul(void) {
    /* M = 1 with 16-bit weights: the GEMV kernel (vector loads when K % 8 == 0), else cuBLAS */
    const int64_t shapes[][3] = {{1, 1, 1},       {1, 64, 64},    {7, 33, 17},   {16, 256, 128}, {130, 97, 300},
                                 {3, 1000, 513},  {8, 333, 4096}, {2, 4100, 1032}, {9, 64, 64},  {1, 5000, 4096}};
    const mm_dtype dts[] = {MM_DTYPE_F32, MM_DTYPE_BF16, MM_DTYPE_F16};
    const double bounds[] = {1e-10, 5e-5, 1e-6}; /* bf16/f16: the activation is rounded to the weight's type */
    for (size_t d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
            int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], wshape[2] = {N, K};
            weight w;
            weight_make(&w, dts[d], 2, wshape, MM_WEIGHT_MATMUL, 0.5f);
            float *x = rand_vec(M * K, 1.0f), *want = malloc((size_t)(M * N) * 4), *xd = dev(x, M * K);
            float *yd = gpu->ops->alloc(gpu, (size_t)(M * N) * 4);
            ref->ops->matmul(ref, &w.r, x, want, M);
            EXPECT(gpu->ops->matmul(gpu, &w.g, xd, yd, M) == MM_OK, "%s", mm_error_last());
            char sh[64];
            snprintf(sh, sizeof sh, "%s M%lld N%lld K%lld", mm_dtype_name(dts[d]), (long long)M, (long long)N, (long long)K);
            check("matmul", sh, yd, want, M * N, bounds[d]);
            gpu->ops->dealloc(gpu, xd), gpu->ops->dealloc(gpu, yd), free(x), free(want), weight_free(&w);
        }
}

static void test_embed(void) {
    const mm_dtype dts[] = {MM_DTYPE_F32, MM_DTYPE_BF16, MM_DTYPE_F16};
    for (size_t d = 0; d < 3; d++) {
        int64_t V = 1001, D = 67, M = 13, shape[2] = {V, D};
        weight w;
        weight_make(&w, dts[d], 2, shape, MM_WEIGHT_TABLE, 1.0f);
        int32_t ids[13];
        for (int i = 0; i < M; i++) ids[i] = (int32_t)(mm_rng_uniform(&rng_state) * V);
        ids[0] = 0, ids[1] = (int32_t)V - 1;
        float *want = malloc((size_t)(M * D) * 4), *yd = gpu->ops->alloc(gpu, (size_t)(M * D) * 4);
        ref->ops->embed(ref, &w.r, ids, M, want);
        EXPECT(gpu->ops->embed(gpu, &w.g, ids, M, yd) == MM_OK, "%s", mm_error_last());
        check("embed", mm_dtype_name(dts[d]), yd, want, M * D, 0.0);
        int32_t bad = (int32_t)V;
        EXPECT(gpu->ops->embed(gpu, &w.g, &bad, 1, yd) == MM_ERR_INVALID, "out-of-range id accepted");
        gpu->ops->dealloc(gpu, yd), free(want), weight_free(&w);
    }
}

/* rmsnorm, layernorm (with and without affine), l2norm, softmax */
/* The reference sums a row sequentially in f32: its own rounding error grows like
 * sqrt(D) x eps (a random walk), so the squared relative error that NMSE measures
 * grows like D x eps^2 (1.8e-9 at the 128258-wide vocabulary row). */
static double row_bound(int64_t D) { return 1e-10 + (double)D * FLT_EPSILON * FLT_EPSILON; }

static void test_rows(void) {
    const int64_t shapes[][2] = {{1, 1}, {3, 7}, {17, 4096}, {5, 1152}, {2, 128258}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t M = shapes[s][0], D = shapes[s][1], n = M * D;
        float *x = rand_vec(n, 3.0f), *w = rand_vec(D, 1.0f), *b = rand_vec(D, 1.0f), *want = malloc((size_t)n * 4);
        float *xd = dev(x, n), *wd = dev(w, D), *bd = dev(b, D), *yd = gpu->ops->alloc(gpu, (size_t)n * 4);
        char sh[64];
        snprintf(sh, sizeof sh, "M%lld D%lld", (long long)M, (long long)D);
        ref->ops->rmsnorm(ref, x, w, want, M, D, 1e-5f);
        gpu->ops->rmsnorm(gpu, xd, wd, yd, M, D, 1e-5f);
        check("rmsnorm", sh, yd, want, n, row_bound(D));
        ref->ops->layernorm(ref, x, w, b, want, M, D, 1e-6f);
        gpu->ops->layernorm(gpu, xd, wd, bd, yd, M, D, 1e-6f);
        check("layernorm", sh, yd, want, n, row_bound(D));
        ref->ops->layernorm(ref, x, NULL, NULL, want, M, D, 1e-6f);
        gpu->ops->layernorm(gpu, xd, NULL, NULL, yd, M, D, 1e-6f);
        check("layernorm (plain)", sh, yd, want, n, row_bound(D));
        ref->ops->l2norm(ref, x, want, M, D, 1e-12f);
        gpu->ops->l2norm(gpu, xd, yd, M, D, 1e-12f);
        check("l2norm", sh, yd, want, n, row_bound(D));
        ref->ops->softmax(ref, x, want, M, D);
        gpu->ops->softmax(gpu, xd, yd, M, D);
        check("softmax", sh, yd, want, n, row_bound(D));
        gpu->ops->rmsnorm(gpu, xd, wd, xd, M, D, 1e-5f); /* in place */
        ref->ops->rmsnorm(ref, x, w, want, M, D, 1e-5f);
        check("rmsnorm (in place)", sh, xd, want, n, row_bound(D));
        gpu->ops->dealloc(gpu, xd), gpu->ops->dealloc(gpu, wd), gpu->ops->dealloc(gpu, bd), gpu->ops->dealloc(gpu, yd);
        free(x), free(w), free(b), free(want);
    }
}

static void test_rope(void) {
    const int32_t cfg[][3] = {{1, 1, 2}, {5, 4, 64}, {33, 8, 128}, {7, 3, 72}};
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        int64_t M = cfg[c][0];
        int32_t H = cfg[c][1], hd = cfg[c][2];
        int64_t n = M * H * hd;
        float *x = rand_vec(n, 1.0f), *freq = malloc((size_t)hd / 2 * 4);
        for (int i = 0; i < hd / 2; i++) freq[i] = 1.0f / powf(500000.0f, (float)(2 * i) / (float)hd);
        int32_t *pos = malloc((size_t)M * 4);
        for (int64_t m = 0; m < M; m++) pos[m] = (int32_t)(mm_rng_uniform(&rng_state) * 131072);
        float *xd = dev(x, n);
        ref->ops->rope(ref, x, pos, freq, M, H, hd);
        EXPECT(gpu->ops->rope(gpu, xd, pos, freq, M, H, hd) == MM_OK, "%s", mm_error_last());
        char sh[64];
        snprintf(sh, sizeof sh, "M%lld H%d hd%d", (long long)M, H, hd);
        check("rope", sh, xd, x, n, 1e-9);
        gpu->ops->dealloc(gpu, xd), free(x), free(freq), free(pos);
    }
}

/* kv_store then paged attention: sequences with shuffled block tables, prefill rows
 * (n_keys growing within one table) and decode rows, contexts past several splits.
 * Prefill groups of MM_CUDA_ATTN_GEMM_MIN_ROWS (16) rows or more take the GEMM path
 * (several passes past 256 rows), shorter ones and decode rows the kernel. */
static void test_attention(void) {
    typedef struct {
        int32_t H, KVH, hd, bs;
        int n_seqs, max_ctx;
        mm_dtype dt;
        int prefill; /* rows of sequence 0: its last `prefill` positions */
    } cfg_t;
    const cfg_t cfgs[] = {{4, 4, 64, 16, 3, 40, MM_DTYPE_F32, 9},      {8, 2, 64, 16, 5, 700, MM_DTYPE_F32, 9},
                          {32, 8, 128, 16, 2, 3000, MM_DTYPE_BF16, 9}, {6, 3, 72, 7, 4, 300, MM_DTYPE_BF16, 9},
                          {2, 1, 256, 16, 2, 600, MM_DTYPE_F32, 9},    {4, 2, 160, 5, 3, 90, MM_DTYPE_F32, 9},
                          {8, 2, 128, 16, 3, 700, MM_DTYPE_F32, 300},  {32, 8, 128, 16, 2, 3000, MM_DTYPE_BF16, 600},
                          {6, 3, 72, 7, 2, 50, MM_DTYPE_BF16, 50},     {4, 4, 64, 16, 3, 40, MM_DTYPE_F32, 16}};
    for (size_t c = 0; c < sizeof cfgs / sizeof *cfgs; c++) {
        const cfg_t *k = &cfgs[c];
        mm_attn_shape shape = {k->H, k->KVH, k->hd, k->bs, 1.0f / sqrtf((float)k->hd), k->dt};
        int32_t blocks_per_seq = (k->max_ctx + k->bs - 1) / k->bs, n_blocks = blocks_per_seq * k->n_seqs + 3;
        int32_t *perm = malloc((size_t)n_blocks * 4);
        for (int32_t i = 0; i < n_blocks; i++) perm[i] = i;
        for (int32_t i = n_blocks - 1; i > 0; i--) {
            int32_t j = (int32_t)(mm_rng_uniform(&rng_state) * (i + 1)), t = perm[i];
            perm[i] = perm[j], perm[j] = t;
        }
        /* rows: seq 0 is a prefill of its last k->prefill tokens, the others decode one row */
        int32_t ctx[16];
        int64_t M = 0;
        for (int s = 0; s < k->n_seqs; s++) {
            ctx[s] = s == 0 ? k->max_ctx : 1 + (int32_t)(mm_rng_uniform(&rng_state) * (k->max_ctx - 1));
            M += s == 0 ? (ctx[s] < k->prefill ? ctx[s] : k->prefill) : 1;
        }
        size_t esz = mm_dtype_size(k->dt), cache_elems = (size_t)n_blocks * k->KVH * k->bs * k->hd;
        void *kc_r = calloc(cache_elems, esz), *vc_r = calloc(cache_elems, esz);
        void *kc_g = gpu->ops->alloc(gpu, cache_elems * esz), *vc_g = gpu->ops->alloc(gpu, cache_elems * esz);
        gpu->ops->upload(gpu, kc_g, kc_r, cache_elems * esz); /* zeros, as the host caches: blocks never written */
        gpu->ops->upload(gpu, vc_g, vc_r, cache_elems * esz); /* must compare equal too */
        mm_attn_row *rows = malloc((size_t)M * sizeof *rows);
        /* store every key of every sequence, in one kv_store call of all positions */
        int64_t n_all = 0;
        for (int s = 0; s < k->n_seqs; s++) n_all += ctx[s];
        int32_t *slots = malloc((size_t)n_all * 4);
        int64_t kvw = (int64_t)k->KVH * k->hd;
        float *kk = rand_vec(n_all * kvw, 1.0f), *vv = rand_vec(n_all * kvw, 1.0f);
        int64_t r = 0, a = 0;
        for (int s = 0; s < k->n_seqs; s++) {
            const int32_t *table = perm + s * blocks_per_seq;
            for (int32_t p = 0; p < ctx[s]; p++) slots[a++] = table[p / k->bs] * k->bs + p % k->bs;
            int first = s == 0 ? ctx[s] - (int32_t)(ctx[s] < k->prefill ? ctx[s] : k->prefill) : ctx[s] - 1;
            for (int32_t p = first; p < ctx[s]; p++) rows[r++] = (mm_attn_row){table, p + 1};
        }
        float *kd = dev(kk, n_all * kvw), *vd = dev(vv, n_all * kvw);
        ref->ops->kv_store(ref, kc_r, vc_r, kk, vv, slots, n_all, &shape);
        EXPECT(gpu->ops->kv_store(gpu, kc_g, vc_g, kd, vd, slots, n_all, &shape) == MM_OK, "%s", mm_error_last());
        void *kc_h = malloc(cache_elems * esz), *vc_h = malloc(cache_elems * esz);
        gpu->ops->download(gpu, kc_h, kc_g, cache_elems * esz);
        gpu->ops->download(gpu, vc_h, vc_g, cache_elems * esz);
        EXPECT(memcmp(kc_h, kc_r, cache_elems * esz) == 0, "kv_store cfg %zu: K cache bits differ", c);
        EXPECT(memcmp(vc_h, vc_r, cache_elems * esz) == 0, "kv_store cfg %zu: V cache bits differ", c);
        free(vc_h);
        int64_t qn = M * k->H * k->hd;
        float *q = rand_vec(qn, 1.0f), *want = malloc((size_t)qn * 4), *qd = dev(q, qn);
        float *od = gpu->ops->alloc(gpu, (size_t)qn * 4);
        ref->ops->attention(ref, q, kc_r, vc_r, rows, M, &shape, want);
        EXPECT(gpu->ops->attention(gpu, qd, kc_g, vc_g, rows, M, &shape, od) == MM_OK, "%s", mm_error_last());
        char sh[80];
        snprintf(sh, sizeof sh, "%s H%d/%d hd%d bs%d rows%lld/%d ctx%d", mm_dtype_name(k->dt), k->H, k->KVH, k->hd,
                 k->bs, (long long)M, k->prefill, k->max_ctx);
        check("attention", sh, od, want, qn, 1e-9);
        /* batch invariance of the row-at-a-time kernel: the last row (a decode row, or a
         * short prefill's) alone gives the same bits as in the batch */
        float *alone = host(od, qn), *od1 = gpu->ops->alloc(gpu, (size_t)(k->H * k->hd) * 4);
        gpu->ops->attention(gpu, qd + (M - 1) * k->H * k->hd, kc_g, vc_g, rows + M - 1, 1, &shape, od1);
        float *one = host(od1, k->H * k->hd);
        EXPECT(memcmp(one, alone + (M - 1) * k->H * k->hd, (size_t)(k->H * k->hd) * 4) == 0,
               "attention %s: a row alone differs from the row in the batch", sh);
        free(alone), free(one), gpu->ops->dealloc(gpu, od1);
        gpu->ops->dealloc(gpu, kc_g), gpu->ops->dealloc(gpu, vc_g), gpu->ops->dealloc(gpu, kd), gpu->ops->dealloc(gpu, vd);
        gpu->ops->dealloc(gpu, qd), gpu->ops->dealloc(gpu, od);
        free(kc_r), free(vc_r), free(kc_h), free(rows), free(slots), free(kk), free(vv), free(q), free(want), free(perm);
    }
}

static void test_attention_dense(void) {
    const int64_t cfg[][5] = {{1, 1, 1, 1, 8}, {2, 5, 7, 3, 40}, {1, 300, 300, 4, 72}, {2, 9, 700, 2, 160}, {1, 33, 65, 1, 512}};
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        int64_t B = cfg[c][0], Tq = cfg[c][1], Tk = cfg[c][2], H = cfg[c][3], hd = cfg[c][4];
        int64_t nq = B * Tq * H * hd, nk = B * Tk * H * hd;
        float *q = rand_vec(nq, 1.0f), *k = rand_vec(nk, 1.0f), *v = rand_vec(nk, 1.0f), *want = malloc((size_t)nq * 4);
        float *qd = dev(q, nq), *kd = dev(k, nk), *vd = dev(v, nk), *od = gpu->ops->alloc(gpu, (size_t)nq * 4);
        float scale = 1.0f / sqrtf((float)hd);
        ref->ops->attention_dense(ref, q, k, v, B, Tq, Tk, (int32_t)H, (int32_t)hd, scale, want);
        EXPECT(gpu->ops->attention_dense(gpu, qd, kd, vd, B, Tq, Tk, (int32_t)H, (int32_t)hd, scale, od) == MM_OK, "%s",
               mm_error_last());
        char sh[80];
        snprintf(sh, sizeof sh, "B%lld Tq%lld Tk%lld H%lld hd%lld", (long long)B, (long long)Tq, (long long)Tk,
                 (long long)H, (long long)hd);
        check("attention_dense", sh, od, want, nq, 1e-9);
        gpu->ops->dealloc(gpu, qd), gpu->ops->dealloc(gpu, kd), gpu->ops->dealloc(gpu, vd), gpu->ops->dealloc(gpu, od);
        free(q), free(k), free(v), free(want);
    }
}

/* silu_mul, add, add_bias, gelu (erf, tanh), activation (silu, relu), geglu, concat, upsample */
static void test_pointwise(void) {
    const int64_t shapes[][2] = {{1, 1}, {3, 37}, {64, 1280}};
    for (size_t s = 0; s < 3; s++) {
        int64_t M = shapes[s][0], N = shapes[s][1], n = M * N;
        char sh[64];
        snprintf(sh, sizeof sh, "M%lld N%lld", (long long)M, (long long)N);
        float *x = rand_vec(2 * n, 4.0f), *y = rand_vec(2 * n, 2.0f), *want = malloc((size_t)(4 * n) * 4);
        float *xd = dev(x, 2 * n), *yd = dev(y, 2 * n), *od = gpu->ops->alloc(gpu, (size_t)(4 * n) * 4);
#define SAME_INPUT(op_call_ref, op_call_gpu, name, count, bound)                                        \
    memcpy(want, x, (size_t)(2 * n) * 4);                                                              \
    gpu->ops->upload(gpu, od, x, (size_t)(2 * n) * 4);                                                 \
    op_call_ref;                                                                                       \
    op_call_gpu;                                                                                       \
    check(name, sh, od, want, count, bound)
        SAME_INPUT(ref->ops->silu_mul(ref, want, y, n), gpu->ops->silu_mul(gpu, od, yd, n), "silu_mul", n, 1e-12);
        SAME_INPUT(ref->ops->add(ref, want, y, n), gpu->ops->add(gpu, od, yd, n), "add", n, 0.0);
        SAME_INPUT(ref->ops->add_bias(ref, want, y, M, N), gpu->ops->add_bias(gpu, od, yd, M, N), "add_bias", n, 0.0);
        SAME_INPUT(ref->ops->gelu(ref, want, n, 0), gpu->ops->gelu(gpu, od, n, 0), "gelu", n, 1e-12);
        SAME_INPUT(ref->ops->gelu(ref, want, n, 1), gpu->ops->gelu(gpu, od, n, 1), "gelu (tanh)", n, 1e-12);
        SAME_INPUT(ref->ops->activation(ref, want, n, MM_ACT_SILU), gpu->ops->activation(gpu, od, n, MM_ACT_SILU),
                   "activation silu", n, 1e-12);
        SAME_INPUT(ref->ops->activation(ref, want, n, MM_ACT_RELU), gpu->ops->activation(gpu, od, n, MM_ACT_RELU),
                   "activation relu", n, 0.0);
#undef SAME_INPUT
        ref->ops->geglu(ref, x, want, M, N);
        gpu->ops->geglu(gpu, xd, od, M, N);
        check("geglu", sh, od, want, n, 1e-12);
        ref->ops->concat_cols(ref, x, y, want, M, N, N + 3 > 2 * N ? 1 : N + 3);
        gpu->ops->concat_cols(gpu, xd, yd, od, M, N, N + 3 > 2 * N ? 1 : N + 3);
        check("concat_cols", sh, od, want, M * (N + (N + 3 > 2 * N ? 1 : N + 3)), 0.0);
        /* [1, M, N, 1] -> [1, 2M, 2N, 1]: n values in, 4n out (want and od hold 4n) */
        ref->ops->upsample_nearest2x(ref, x, want, 1, M, N, 1);
        gpu->ops->upsample_nearest2x(gpu, xd, od, 1, M, N, 1);
        check("upsample_nearest2x", sh, od, want, 4 * n, 0.0);
        gpu->ops->dealloc(gpu, xd), gpu->ops->dealloc(gpu, yd), gpu->ops->dealloc(gpu, od);
        free(x), free(y), free(want);
    }
}

static void test_conv_groupnorm(void) {
    const int64_t cfg[][8] = {/* B, H, W, IC, OC, k, stride, pad */
                              {1, 1, 1, 1, 1, 1, 1, 0},  {2, 7, 9, 5, 6, 3, 1, 1}, {1, 8, 8, 16, 8, 3, 2, 1},
                              {2, 6, 5, 12, 10, 1, 1, 0}, {1, 9, 7, 4, 3, 3, 2, 0}, {1, 16, 16, 32, 64, 3, 1, 1}};
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        int64_t B = cfg[c][0], H = cfg[c][1], W = cfg[c][2], IC = cfg[c][3], OC = cfg[c][4], k = cfg[c][5];
        int32_t stride = (int32_t)cfg[c][6], pad = (int32_t)cfg[c][7];
        int64_t Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
        int64_t wshape[4] = {OC, IC, k, k}, nx = B * H * W * IC, ny = B * Ho * Wo * OC;
        weight w;
        weight_make(&w, c % 2 ? MM_DTYPE_BF16 : MM_DTYPE_F32, 4, wshape, MM_WEIGHT_CONV, 0.3f);
        float *x = rand_vec(nx, 1.0f), *bias = rand_vec(OC, 1.0f), *want = malloc((size_t)ny * 4);
        float *xd = dev(x, nx), *bd = dev(bias, OC), *yd = gpu->ops->alloc(gpu, (size_t)ny * 4);
        char sh[80];
        snprintf(sh, sizeof sh, "B%lld %lldx%lldx%lld->%lld k%lld s%d p%d", (long long)B, (long long)H, (long long)W,
                 (long long)IC, (long long)OC, (long long)k, stride, pad);
        ref->ops->conv2d(ref, &w.r, c % 3 ? bias : NULL, x, want, B, H, W, stride, pad);
        EXPECT(gpu->ops->conv2d(gpu, &w.g, c % 3 ? bd : NULL, xd, yd, B, H, W, stride, pad) == MM_OK, "%s", mm_error_last());
        check("conv2d", sh, yd, want, ny, 1e-10);
        gpu->ops->dealloc(gpu, xd), gpu->ops->dealloc(gpu, bd), gpu->ops->dealloc(gpu, yd);
        free(x), free(bias), free(want), weight_free(&w);
    }
    const int64_t gcfg[][4] = {{1, 1, 2, 1}, {2, 37, 64, 32}, {1, 4096, 320, 32}, {2, 9, 48, 8}};
    for (size_t c = 0; c < sizeof gcfg / sizeof *gcfg; c++) {
        int64_t B = gcfg[c][0], HW = gcfg[c][1], C = gcfg[c][2], n = B * HW * C;
        int32_t G = (int32_t)gcfg[c][3];
        float *x = rand_vec(n, 2.0f), *w = rand_vec(C, 1.0f), *b = rand_vec(C, 1.0f), *want = malloc((size_t)n * 4);
        float *xd = dev(x, n), *wd = dev(w, C), *bd = dev(b, C), *yd = gpu->ops->alloc(gpu, (size_t)n * 4);
        for (int silu = 0; silu < 2; silu++) {
            char sh[64];
            snprintf(sh, sizeof sh, "B%lld HW%lld C%lld G%d silu%d", (long long)B, (long long)HW, (long long)C, G, silu);
            ref->ops->groupnorm(ref, x, w, b, want, B, HW, C, G, 1e-6f, silu);
            gpu->ops->groupnorm(gpu, xd, wd, bd, yd, B, HW, C, G, 1e-6f, silu);
            check("groupnorm", sh, yd, want, n, 1e-10);
        }
        gpu->ops->dealloc(gpu, xd), gpu->ops->dealloc(gpu, wd), gpu->ops->dealloc(gpu, bd), gpu->ops->dealloc(gpu, yd);
        free(x), free(w), free(b), free(want);
    }
}

static void test_vision(void) {
    const int64_t pc[][5] = {{1, 3, 14, 14, 14}, {2, 3, 30, 31, 14}, {1, 3, 126, 126, 14}, {1, 2, 9, 7, 3}};
    for (size_t c = 0; c < sizeof pc / sizeof *pc; c++) {
        int64_t B = pc[c][0], C = pc[c][1], H = pc[c][2], W = pc[c][3];
        int32_t p = (int32_t)pc[c][4];
        int64_t nx = B * C * H * W, ny = B * (H / p) * (W / p) * C * p * p;
        float *x = rand_vec(nx, 1.0f), *want = malloc((size_t)ny * 4), *xd = dev(x, nx), *yd = gpu->ops->alloc(gpu, (size_t)ny * 4);
        ref->ops->patchify(ref, x, want, B, C, H, W, p);
        gpu->ops->patchify(gpu, xd, yd, B, C, H, W, p);
        char sh[64];
        snprintf(sh, sizeof sh, "B%lld C%lld %lldx%lld p%d", (long long)B, (long long)C, (long long)H, (long long)W, p);
        check("patchify", sh, yd, want, ny, 0.0);
        gpu->ops->dealloc(gpu, xd), gpu->ops->dealloc(gpu, yd), free(x), free(want);
    }
    const int64_t rc[][6] = {{1, 27, 27, 5, 8, 8}, {2, 9, 9, 3, 4, 5}, {1, 4, 4, 2, 9, 7}, {1, 1, 1, 1, 3, 3}};
    for (size_t c = 0; c < sizeof rc / sizeof *rc; c++) {
        int64_t B = rc[c][0], H = rc[c][1], W = rc[c][2], C = rc[c][3], Ho = rc[c][4], Wo = rc[c][5];
        int64_t nx = B * H * W * C, ny = B * Ho * Wo * C;
        float *x = rand_vec(nx, 1.0f), *want = malloc((size_t)ny * 4), *xd = dev(x, nx), *yd = gpu->ops->alloc(gpu, (size_t)ny * 4);
        ref->ops->resize_bilinear(ref, x, want, B, H, W, C, Ho, Wo);
        gpu->ops->resize_bilinear(gpu, xd, yd, B, H, W, C, Ho, Wo);
        char sh[64];
        snprintf(sh, sizeof sh, "%lldx%lld -> %lldx%lld C%lld", (long long)H, (long long)W, (long long)Ho, (long long)Wo, (long long)C);
        check("resize_bilinear", sh, yd, want, ny, 1e-12);
        gpu->ops->dealloc(gpu, xd), gpu->ops->dealloc(gpu, yd), free(x), free(want);
    }
}

/* ids and generator states identical to the CPU's for every sampling mode */
static void test_sample(void) {
    const int64_t Vs[] = {7, 1000, 128258};
    const mm_sampling modes[] = {{0.0f, 1.0f, 0},   {0.8f, 1.0f, 0},  {1.0f, 1.0f, 40},  {0.7f, 0.9f, 0},
                                 {1.2f, 0.95f, 50}, {1.0f, 0.5f, 5000}, {1.0f, 0.999f, 0}, {0.0f, 0.5f, 3}};
    const int n_modes = sizeof modes / sizeof *modes;
    for (size_t v = 0; v < 3; v++) {
        int64_t V = Vs[v], M = 2 * n_modes;
        float *lg = rand_vec(M * V, 4.0f);
        for (int64_t i = 0; i < V; i += 3) lg[i] = 5.0f; /* row 0: ties at the max, lowest id wins */
        float *ld = dev(lg, M * V);
        mm_sampling p[32];
        uint64_t rr[32], rg[32];
        int32_t want[32], got[32];
        for (int64_t m = 0; m < M; m++) p[m] = modes[m % n_modes], rr[m] = rg[m] = mm_rng_seed((uint64_t)(m * 7 + v));
        for (int round = 0; round < 3; round++) {
            ref->ops->sample(ref, lg, M, V, p, rr, want);
            EXPECT(gpu->ops->sample(gpu, ld, M, V, p, rg, got) == MM_OK, "%s", mm_error_last());
            int same = !memcmp(want, got, (size_t)M * 4) && !memcmp(rr, rg, (size_t)M * 8);
            printf("sample             V%-6lld round %d                   %s\n", (long long)V, round, same ? "identical" : "DIFFERENT");
            for (int64_t m = 0; m < M; m++)
                EXPECT(want[m] == got[m] && rr[m] == rg[m], "sample V%lld row %lld (T %.2f p %.3f k %d): cpu %d, cuda %d",
                       (long long)V, (long long)m, p[m].temperature, p[m].top_p, p[m].top_k, want[m], got[m]);
        }
        gpu->ops->dealloc(gpu, ld), free(lg);
    }
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* every case's line survives a crash */
    mm_crash_trace_install();
    if (mm_cuda_device_count() == 0) {
        printf("test_backend_cuda: no GPU (or no CUDA build): skipped\n");
        return 77;
    }
    if (mm_backend_cpu_ref_init(&ref) != MM_OK || mm_backend_init("cuda", 1, &gpu) != MM_OK) {
        fprintf(stderr, "backend init: %s\n", mm_error_last());
        return 1;
    }
    test_matmul();
    test_embed();
    test_rows();
    test_rope();
    test_attention();
    test_attention_dense();
    test_pointwise();
    test_conv_groupnorm();
    test_vision();
    test_sample();
    mm_cuda_mem mem;
    EXPECT(mm_backend_cuda_mem(gpu, &mem) == MM_OK && mem.allocated == 0 && mem.weights == 0,
           "device memory leaked by the test: %zu allocated, %zu weights", mem.allocated, mem.weights);
    int32_t nb = 0;
    EXPECT(mm_cuda_plan_kv_blocks(gpu, 0.5, 0, (size_t)1 << 20, 1, &nb) == MM_OK && nb > 0, "%s", mm_error_last());
    EXPECT(mm_cuda_plan_kv_blocks(gpu, 0.5, 0, (size_t)1 << 50, 1, &nb) == MM_ERR_NOMEM, "a 1 PiB block fit?");
    printf("planner: %d blocks of 1 MiB in half the free memory; error for 1 PiB: %s\n", nb, mm_error_last());
    mm_backend_free(gpu), mm_backend_free(ref);
    return mm_test_finish("test_backend_cuda");
}
