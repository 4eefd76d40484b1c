/* Every op of the fast CPU backend against the reference backend (in the manner of
 * llama.cpp's test-backend-ops): random inputs, odd shapes, a normalised-MSE bound per
 * op, failure on NaN/Inf. Then batch invariance: a row's result must be bit-identical
 * whatever M, the other rows or the thread count. Then the sampler's contracts. */
#include <math.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/testutil.h"

static uint64_t rng_state = 12345;

static float frand(void) { return mm_rng_uniform(&rng_state) * 2.0f - 1.0f; }

static float *rand_f32(int64_t n, float scale) {
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

/* A [rows, cols] weight of the given dtype with random values. */
static mm_tensor rand_weight(mm_dtype dt, int64_t rows, int64_t cols, float scale) {
    mm_tensor t = {.dtype = dt, .ndim = 2, .shape = {rows, cols}};
    size_t n = (size_t)(rows * cols);
    if (dt == MM_DTYPE_F32) {
        t.data = rand_f32((int64_t)n, scale);
    } else {
        uint16_t *h = malloc(n * 2);
        for (size_t i = 0; i < n; i++) h[i] = dt == MM_DTYPE_BF16 ? mm_f32_to_bf16(frand() * scale) : mm_f32_to_f16(frand() * scale);
        t.data = h;
    }
    return t;
}


static mm_backend *ref_be, *fast_be, *fast1_be;

/* Loads a weight through a backend's weight_load, as the models do. */
static mm_tensor load_w(mm_backend *be, const mm_tensor *src) {
    mm_st_tensor st = {.name = "w", .file = "test", .dtype = src->dtype, .ndim = 2,
                       .shape = {src->shape[0], src->shape[1]}, .numel = src->shape[0] * src->shape[1], .data = src->data};
    mm_tensor out;
    mm_status s = be->ops->weight_load(be, &st, MM_WEIGHT_MATMUL, &out);
    EXPECT(s == MM_OK, "weight_load: %s", mm_error_last());
    return out;
}

static void test_matmul(void) {
    const int64_t shapes[][3] = {{1, 64, 32}, {3, 67, 33}, {17, 128, 257}, {64, 300, 100}, {5, 1, 9}, {130, 96, 70}};
    const mm_dtype dts[] = {MM_DTYPE_F32, MM_DTYPE_BF16, MM_DTYPE_F16};
    for (size_t d = 0; d < 3; d++) {
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
            int64_t M = shapes[i][0], K = shapes[i][1], N = shapes[i][2];
            mm_tensor w = rand_weight(dts[d], N, K, 0.5f);
            float *x = rand_f32(M * K, 1.0f), *y = calloc((size_t)(M * N), 4), *yr = calloc((size_t)(M * N), 4);
            mm_tensor wf = load_w(fast_be, &w), wr = load_w(ref_be, &w);
            EXPECT(fast_be->ops->matmul(fast_be, &wf, x, y, M) == MM_OK, "matmul: %s", mm_error_last());
            ref_be->ops->matmul(ref_be, &wr, x, yr, M);
            /* bf16 weights run with bf16-rounded activations: relative error ~2^-9 per term */
            double bound = dts[d] == MM_DTYPE_BF16 ? 1e-4 : 1e-10;
            double e = mm_nmse(y, yr, M * N);
            EXPECT(e < bound, "matmul %s M=%lld K=%lld N=%lld nmse %g", mm_dtype_name(dts[d]), (long long)M,
                   (long long)K, (long long)N, e);
            fast_be->ops->weight_release(fast_be, &wf);
            ref_be->ops->weight_release(ref_be, &wr);
            free(w.data), free(x), free(y), free(yr);
        }
    }
}

static void test_elementwise(void) {
    const int64_t M = 7, D = 131;
    float *x = rand_f32(M * D, 2.0f), *w = rand_f32(D, 1.0f), *a = calloc(M * D, 4), *b = calloc(M * D, 4);
    fast_be->ops->rmsnorm(fast_be, x, w, a, M, D, 1e-5f);
    ref_be->ops->rmsnorm(ref_be, x, w, b, M, D, 1e-5f);
    EXPECT(mm_nmse(a, b, M * D) < 1e-12, "rmsnorm nmse %g", mm_nmse(a, b, M * D));

    float *g1 = rand_f32(M * D, 4.0f), *up = rand_f32(M * D, 1.0f), *g2 = malloc(M * D * 4), *g3 = malloc(M * D * 4);
    g1[3] = -120.0f, g1[4] = 95.0f; /* e^-g overflows f32 */
    memcpy(g2, g1, M * D * 4), memcpy(g3, g1, M * D * 4);
    fast_be->ops->silu_mul(fast_be, g1, up, M * D);
    ref_be->ops->silu_mul(ref_be, g2, up, M * D);
    EXPECT(mm_nmse(g1, g2, M * D) < 1e-12, "silu_mul nmse %g", mm_nmse(g1, g2, M * D));
    fast1_be->ops->silu_mul(fast1_be, g3 + 5, up + 5, D); /* one row at another offset (vector tail) */
    EXPECT(memcmp(g1 + 5, g3 + 5, D * 4) == 0, "silu_mul values depend on where the span starts or ends");

    fast_be->ops->softmax(fast_be, x, a, M, D);
    ref_be->ops->softmax(ref_be, x, b, M, D);
    EXPECT(mm_nmse(a, b, M * D) < 1e-12, "softmax nmse %g", mm_nmse(a, b, M * D));

    memcpy(a, x, M * D * 4), memcpy(b, x, M * D * 4);
    fast_be->ops->add(fast_be, a, w, D);
    ref_be->ops->add(ref_be, b, w, D);
    EXPECT(memcmp(a, b, M * D * 4) == 0, "add differs");

    /* rope: positions spread over a long context */
    const int32_t H = 3, hd = 18;
    int32_t pos[7] = {0, 1, 5, 100, 1000, 8191, 70000};
    float inv[9];
    for (int i = 0; i < 9; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / hd);
    float *r1 = rand_f32(M * H * hd, 1.0f), *r2 = malloc(M * H * hd * 4);
    memcpy(r2, r1, M * H * hd * 4);
    fast_be->ops->rope(fast_be, r1, pos, inv, M, H, hd);
    ref_be->ops->rope(ref_be, r2, pos, inv, M, H, hd);
    EXPECT(memcmp(r1, r2, M * H * hd * 4) == 0, "rope differs");

    /* embedding gather, bf16 table */
    mm_tensor tab = rand_weight(MM_DTYPE_BF16, 50, D, 1.0f);
    int32_t ids[7] = {0, 49, 3, 3, 17, 25, 1};
    fast_be->ops->embed(fast_be, &tab, ids, M, a);
    ref_be->ops->embed(ref_be, &tab, ids, M, b);
    EXPECT(memcmp(a, b, M * D * 4) == 0, "embed differs");
    int32_t bad = 50;
    EXPECT(fast_be->ops->embed(fast_be, &tab, &bad, 1, a) == MM_ERR_INVALID, "out-of-range id accepted");
    free(tab.data), free(x), free(w), free(a), free(b), free(g1), free(g2), free(g3), free(up), free(r1), free(r2);
}

/* Paged cache with scattered blocks; rows of several sequences with different lengths. */
typedef struct {
    void *k, *v; /* [n_blocks, KVH, B, hd] of shape.kv_dtype */
    int32_t tables[4][16];
    mm_attn_shape shape;
} attn_fixture;

static void *rand_cache(int64_t n, mm_dtype dt) {
    float *f = rand_f32(n, 1.0f);
    if (dt == MM_DTYPE_F32) return f;
    uint16_t *h = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) h[i] = mm_f32_to_bf16(f[i]);
    free(f);
    return h;
}

static void attn_fixture_init(attn_fixture *f, int32_t H, int32_t KVH, int32_t hd, int32_t B, int32_t n_blocks,
                              mm_dtype dt) {
    f->shape = (mm_attn_shape){H, KVH, hd, B, 1.0f / sqrtf((float)hd), dt};
    f->k = rand_cache((int64_t)n_blocks * B * KVH * hd, dt);
    f->v = rand_cache((int64_t)n_blocks * B * KVH * hd, dt);
    for (int s = 0; s < 4; s++)
        for (int i = 0; i < 16; i++) f->tables[s][i] = (i * 4 + s * 7 + i * i) % n_blocks; /* scattered */
}

/* Fast attention against the reference on a paged cache with scattered blocks, rows of
 * several sequences (runs of one sequence too, as in a prefill chunk; a row without keys),
 * then batch invariance: each row alone, single-threaded, is bit-identical. */
static void check_attention(const attn_fixture *f, const char *what) {
    const int64_t M = 11;
    int32_t H = f->shape.n_heads, hd = f->shape.head_dim;
    mm_attn_row rows[11] = {{f->tables[0], 1},   {f->tables[0], 2},  {f->tables[1], 200}, {f->tables[2], 17},
                            {f->tables[3], 256}, {f->tables[1], 16}, {f->tables[2], 33},  {f->tables[3], 5},
                            {f->tables[0], 129}, {f->tables[1], 0},  {f->tables[1], 48}};
    int64_t row_floats = (int64_t)H * hd, qn = M * row_floats;
    float *q = rand_f32(qn, 1.0f), *a = calloc(qn, 4), *b = calloc(qn, 4), *c = calloc(qn, 4);
    fast_be->ops->attention(fast_be, q, f->k, f->v, rows, M, &f->shape, a);
    ref_be->ops->attention(ref_be, q, f->k, f->v, rows, M, &f->shape, b);
    EXPECT(mm_nmse(a, b, qn) < 1e-10, "attention (%s) nmse %g", what, mm_nmse(a, b, qn));
    for (int64_t m = 0; m < M; m++)
        fast1_be->ops->attention(fast1_be, q + m * row_floats, f->k, f->v, &rows[m], 1, &f->shape, c + m * row_floats);
    EXPECT(memcmp(a, c, qn * 4) == 0, "attention (%s) rows differ when computed alone / single-threaded", what);
    free(q), free(a), free(b), free(c);
}

static void test_attention(mm_dtype dt) {
    attn_fixture f;
    attn_fixture_init(&f, 8, 2, 20, 16, 64, dt);
    check_attention(&f, mm_dtype_name(dt));
    /* kv_store puts each head row where mm_kv_offset says, rounded to the cache dtype */
    const int64_t SM = 3;
    int32_t slots[3] = {0, 17, 16 * 63 + 15}; /* block 0 row 0, block 1 row 1, last slot */
    float *kr = rand_f32(SM * 2 * 20, 1.0f), *vr = rand_f32(SM * 2 * 20, 1.0f);
    fast_be->ops->kv_store(fast_be, f.k, f.v, kr, vr, slots, SM, &f.shape);
    int stored = 1;
    for (int64_t m = 0; m < SM; m++) {
        int32_t block = slots[m] / 16;
        for (int32_t h = 0; h < 2; h++)
            for (int32_t d = 0; d < 20; d++) {
                int64_t at = mm_kv_offset(&block, slots[m] % 16, h, &f.shape) + d;
                float want_k = kr[(m * 2 + h) * 20 + d], want_v = vr[(m * 2 + h) * 20 + d];
                if (dt == MM_DTYPE_BF16)
                    want_k = mm_bf16_to_f32(mm_f32_to_bf16(want_k)), want_v = mm_bf16_to_f32(mm_f32_to_bf16(want_v));
                stored &= mm_cpu_load_elem(dt, f.k, at) == want_k && mm_cpu_load_elem(dt, f.v, at) == want_v;
            }
    }
    EXPECT(stored, "kv_store (%s) misplaced or misrounded a value", mm_dtype_name(dt));
    free(kr), free(vr), free(f.k), free(f.v);
}

/* The head sizes the fast attention specialises (64, 128) and other group sizes. */
static void test_attention_shapes(void) {
    const struct { int32_t H, KVH, hd, block; mm_dtype dt; } cases[] = {
        {12, 12, 64, 16, MM_DTYPE_BF16}, {8, 2, 128, 16, MM_DTYPE_BF16}, {4, 4, 64, 32, MM_DTYPE_F32},
        {6, 3, 128, 16, MM_DTYPE_F32}, {3, 1, 36, 16, MM_DTYPE_BF16}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        attn_fixture f;
        attn_fixture_init(&f, cases[i].H, cases[i].KVH, cases[i].hd, cases[i].block, 64, cases[i].dt);
        char what[64];
        snprintf(what, sizeof what, "H %d KVH %d hd %d %s", cases[i].H, cases[i].KVH, cases[i].hd,
                 mm_dtype_name(cases[i].dt));
        check_attention(&f, what);
        free(f.k), free(f.v);
    }
}

/* The GEMM row results must not depend on M or the thread count. */
static void test_matmul_invariance(void) {
    const int64_t K = 768, N = 2048 + 13, MAXM = 300;
    const mm_dtype dts[] = {MM_DTYPE_F32, MM_DTYPE_BF16};
    const int64_t Ms[] = {1, 2, 3, 7, 16, 33, 64, 65, 128, 255, 256, 300};
    for (size_t d = 0; d < 2; d++) {
        mm_tensor w = rand_weight(dts[d], N, K, 0.1f);
        mm_tensor wf = load_w(fast_be, &w), w1 = load_w(fast1_be, &w);
        float *x = rand_f32(MAXM * K, 1.0f), *full = malloc(MAXM * N * 4), *y = malloc(MAXM * N * 4);
        fast_be->ops->matmul(fast_be, &wf, x, full, MAXM);
        for (size_t i = 0; i < sizeof Ms / sizeof *Ms; i++) {
            int64_t M = Ms[i], off = MAXM - M; /* the last M rows, so the row offset differs too */
            fast_be->ops->matmul(fast_be, &wf, x + off * K, y, M);
            EXPECT(memcmp(y, full + off * N, M * N * 4) == 0, "%s matmul rows differ at M=%lld (2 threads)",
                   mm_dtype_name(dts[d]), (long long)M);
            fast1_be->ops->matmul(fast1_be, &w1, x + off * K, y, M);
            EXPECT(memcmp(y, full + off * N, M * N * 4) == 0, "%s matmul rows differ at M=%lld (1 thread vs 2)",
                   mm_dtype_name(dts[d]), (long long)M);
        }
        fast_be->ops->weight_release(fast_be, &wf);
        fast1_be->ops->weight_release(fast1_be, &w1);
        free(w.data), free(x), free(full), free(y);
    }
}

static void test_sampling(void) {
    const int64_t V = 1000;
    float *logits = rand_f32(V, 3.0f);
    logits[777] = 10.0f;
    logits[5] = 10.0f; /* tie: the lower id wins, as torch.argmax */
    int32_t id;
    uint64_t rng = mm_rng_seed(1);
    mm_sampling greedy = {0.0f, 1.0f, 0};
    fast_be->ops->sample(fast_be, logits, 1, V, &greedy, &rng, &id);
    EXPECT(id == 5, "argmax tie-break picked %d", id);
    mm_sampling k1 = {1.0f, 1.0f, 1};
    fast_be->ops->sample(fast_be, logits, 1, V, &k1, &rng, &id);
    EXPECT(id == 5, "top_k=1 picked %d", id);
    mm_sampling p_small = {0.7f, 1e-6f, 0};
    fast_be->ops->sample(fast_be, logits, 1, V, &p_small, &rng, &id);
    EXPECT(id == 5, "top_p~0 picked %d", id);
    /* same seed, same sequence */
    mm_sampling hot = {1.5f, 0.9f, 50};
    uint64_t r1 = mm_rng_seed(42), r2 = mm_rng_seed(42);
    int same = 1;
    for (int i = 0; i < 100; i++) {
        int32_t a, b;
        fast_be->ops->sample(fast_be, logits, 1, V, &hot, &r1, &a);
        ref_be->ops->sample(ref_be, logits, 1, V, &hot, &r2, &b);
        same &= a == b;
    }
    EXPECT(same, "seeded sampling not reproducible");
    /* frequencies follow softmax on a 4-token vocabulary */
    float small[4] = {0.0f, 1.0f, 2.0f, -1.0f};
    int counts[4] = {0};
    mm_sampling t1 = {1.0f, 1.0f, 0};
    uint64_t r = mm_rng_seed(7);
    const int n = 40000;
    for (int i = 0; i < n; i++) {
        fast_be->ops->sample(fast_be, small, 1, 4, &t1, &r, &id);
        counts[id]++;
    }
    double z = 0;
    for (int i = 0; i < 4; i++) z += exp(small[i]);
    for (int i = 0; i < 4; i++) {
        double p = exp(small[i]) / z, got = (double)counts[i] / n, sd = sqrt(p * (1 - p) / n);
        EXPECT(fabs(got - p) < 5 * sd, "token %d frequency %.4f, expected %.4f", i, got, p);
    }
    /* top_p = 0.5 on {0,1,2,-1}: probabilities .087 .237 .644 .032 -> only id 2 kept */
    mm_sampling tp = {1.0f, 0.5f, 0};
    int only2 = 1;
    for (int i = 0; i < 200; i++) {
        fast_be->ops->sample(fast_be, small, 1, 4, &tp, &r, &id);
        only2 &= id == 2;
    }
    EXPECT(only2, "top_p=0.5 sampled outside the nucleus");
    /* top_p = 0.8 -> ids 2 and 1 */
    mm_sampling tp8 = {1.0f, 0.8f, 0};
    int seen[4] = {0};
    for (int i = 0; i < 2000; i++) {
        fast_be->ops->sample(fast_be, small, 1, 4, &tp8, &r, &id);
        seen[id]++;
    }
    EXPECT(seen[0] == 0 && seen[3] == 0 && seen[1] > 0 && seen[2] > 0, "top_p=0.8 kept %d %d %d %d", seen[0], seen[1],
           seen[2], seen[3]);
    free(logits);
}

/* LayerNorm, bias, GELU (erf and tanh), L2 normalisation and dense attention. */
static void test_encoder_ops(void) {
    const int64_t M = 5, D = 1153;
    float *x = rand_f32(M * D, 3.0f), *w = rand_f32(D, 1.0f), *b = rand_f32(D, 1.0f);
    float *a = malloc(M * D * 4), *r = malloc(M * D * 4);
    for (int affine = 0; affine < 2; affine++) {
        fast_be->ops->layernorm(fast_be, x, affine ? w : NULL, affine ? b : NULL, a, M, D, 1e-6f);
        ref_be->ops->layernorm(ref_be, x, affine ? w : NULL, affine ? b : NULL, r, M, D, 1e-6f);
        EXPECT(mm_nmse(a, r, M * D) < 1e-12, "layernorm (affine %d) nmse %g", affine, mm_nmse(a, r, M * D));
    }
    for (int approx = 0; approx < 2; approx++) {
        memcpy(a, x, M * D * 4), memcpy(r, x, M * D * 4);
        fast_be->ops->gelu(fast_be, a, M * D, approx);
        ref_be->ops->gelu(ref_be, r, M * D, approx);
        EXPECT(mm_nmse(a, r, M * D) < 1e-12, "gelu (tanh %d) nmse %g", approx, mm_nmse(a, r, M * D));
    }
    { /* a sweep over -12..12 (both tails): each value within 1e-6 of libm's, relative to
       * max(1, |value|), and with the same bits wherever it sits (offset by 3 and cut short) */
        enum { SWEEP = 1537 };
        float sw[SWEEP], sr[SWEEP], sh[SWEEP + 3];
        for (int approx = 0; approx < 2; approx++) {
            for (int i = 0; i < SWEEP; i++) sw[i] = sr[i] = sh[i + 3] = -12.0f + (float)i / 64.0f;
            fast_be->ops->gelu(fast_be, sw, SWEEP, approx);
            ref_be->ops->gelu(ref_be, sr, SWEEP, approx);
            fast_be->ops->gelu(fast_be, sh + 3, SWEEP - 5, approx);
            float worst = 0.0f;
            for (int i = 0; i < SWEEP; i++) worst = fmaxf(worst, fabsf(sw[i] - sr[i]) / fmaxf(1.0f, fabsf(sr[i])));
            EXPECT(worst < 1e-6f, "gelu (tanh %d) sweep: max relative error %g", approx, worst);
            EXPECT(memcmp(sw, sh + 3, (SWEEP - 5) * sizeof(float)) == 0, "gelu (tanh %d) depends on position", approx);
        }
    }
    float g = 1.0f;
    ref_be->ops->gelu(ref_be, &g, 1, 0);
    EXPECT(fabsf(g - 0.8413447f) < 1e-6f, "gelu(1) = %g", g); /* x * Phi(x) */
    memcpy(a, x, M * D * 4), memcpy(r, x, M * D * 4);
    fast_be->ops->add_bias(fast_be, a, b, M, D);
    ref_be->ops->add_bias(ref_be, r, b, M, D);
    EXPECT(memcmp(a, r, M * D * 4) == 0, "add_bias differs");
    fast_be->ops->l2norm(fast_be, x, a, M, D, 1e-12f);
    ref_be->ops->l2norm(ref_be, x, r, M, D, 1e-12f);
    EXPECT(mm_nmse(a, r, M * D) < 1e-12, "l2norm nmse %g", mm_nmse(a, r, M * D));
    double ss = 0;
    for (int64_t d = 0; d < D; d++) ss += (double)a[d] * a[d];
    EXPECT(fabs(ss - 1.0) < 1e-5, "l2norm row norm^2 %g", ss);
    float zero[3] = {0, 0, 0};
    fast_be->ops->l2norm(fast_be, zero, zero, 1, 3, 1e-12f);
    EXPECT(zero[0] == 0 && zero[1] == 0, "l2norm of zero is not zero");
    free(x), free(w), free(b), free(a), free(r);

    /* dense attention: Tq != Tk, several problems, more queries than one chunk */
    const int64_t B = 2, Tq = 300, Tk = 77;
    const int32_t H = 3, hd = 40;
    float *q = rand_f32(B * Tq * H * hd, 1.0f), *k = rand_f32(B * Tk * H * hd, 1.0f), *v = rand_f32(B * Tk * H * hd, 1.0f);
    float *o = malloc(B * Tq * H * hd * 4), *orf = malloc(B * Tq * H * hd * 4), *one = malloc(H * hd * 4);
    float scale = 1.0f / sqrtf((float)hd);
    fast_be->ops->attention_dense(fast_be, q, k, v, B, Tq, Tk, H, hd, scale, o);
    ref_be->ops->attention_dense(ref_be, q, k, v, B, Tq, Tk, H, hd, scale, orf);
    EXPECT(mm_nmse(o, orf, B * Tq * H * hd) < 1e-10, "attention_dense nmse %g", mm_nmse(o, orf, B * Tq * H * hd));
    /* the last query of the second problem alone gives the same bits */
    fast1_be->ops->attention_dense(fast1_be, q + ((Tq + Tq - 1) * H) * hd, k + Tk * H * hd, v + Tk * H * hd, 1, 1, Tk,
                                   H, hd, scale, one);
    EXPECT(memcmp(one, o + ((Tq + Tq - 1) * H) * hd, H * hd * 4) == 0, "attention_dense row depends on the batch");
    free(q), free(k), free(v), free(o), free(orf), free(one);
}

int main(void) {
    if (mm_backend_cpu_ref_init(&ref_be) != MM_OK || mm_backend_cpu_init(2, &fast_be) != MM_OK ||
        mm_backend_cpu_init(1, &fast1_be) != MM_OK) {
        fprintf(stderr, "backend init: %s\n", mm_error_last());
        return 1;
    }
    test_matmul();
    test_elementwise();
    test_attention(MM_DTYPE_F32);
    test_attention(MM_DTYPE_BF16);
    test_attention_shapes();
    test_matmul_invariance();
    test_sampling();
    test_encoder_ops();
    mm_backend_free(ref_be), mm_backend_free(fast_be), mm_backend_free(fast1_be);
    return mm_test_finish("test_kernels");
}
