/* The diffusion-decoder ops (conv2d, groupnorm, nearest upsample, SiLU/ReLU, GEGLU,
 * channel concat) of the fast CPU backend against the reference backend: random
 * inputs, odd shapes, a normalised-MSE bound per op, failure on NaN/Inf. Then
 * invariance: identical bits with 1 and 2 threads, and a batch item's convolution
 * does not depend on the other items. Dense attention: the UNet/SigLIP head sizes and odd
 * ones, query and key counts off the kernel's tiles (64 queries, 120 keys), large scores;
 * a query's bits do not depend on which other queries share its call (nor their count,
 * nor threads). Measured NMSE (f32): conv2d ~1e-14, groupnorm ~1e-14, silu ~1e-15,
 * attention_dense ~1e-13. */
#include <math.h>
#include <string.h>

#include "kernels/backend.h"
#include "tests/testutil.h"

static uint64_t rng_state = 777;
static mm_backend *ref_be, *fast_be, *fast1_be;

static float *rand_f32(int64_t n, float scale) {
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = (mm_rng_uniform(&rng_state) * 2.0f - 1.0f) * scale;
    return p;
}

/* sum (a-b)^2 / sum b^2; +inf on any non-finite value */

/* A conv weight [OC, IC, k, k] in dtype dt (data malloc'd) as a safetensors tensor. */
static mm_st_tensor conv_weight(mm_dtype dt, int64_t OC, int64_t IC, int64_t k) {
    int64_t n = OC * IC * k * k;
    float *f = rand_f32(n, 1.0f / sqrtf((float)(IC * k * k)));
    mm_st_tensor t = {.name = "conv.weight", .file = "test", .dtype = dt, .ndim = 4, .shape = {OC, IC, k, k}, .numel = n};
    if (dt == MM_DTYPE_F32) {
        t.data = f;
    } else {
        uint16_t *h = malloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) h[i] = dt == MM_DTYPE_BF16 ? mm_f32_to_bf16(f[i]) : mm_f32_to_f16(f[i]);
        free(f);
        t.data = h;
    }
    t.nbytes = (size_t)n * mm_dtype_size(dt);
    return t;
}

static void test_conv2d(void) {
    /* B, H, W, IC, OC, k, stride, pad */
    const int64_t cases[][8] = {{2, 8, 8, 16, 32, 3, 1, 1}, {1, 7, 9, 5, 3, 3, 1, 1}, {2, 8, 8, 16, 16, 3, 2, 1},
                                {1, 9, 7, 4, 8, 3, 2, 1},   {2, 6, 6, 24, 8, 1, 1, 0}, {1, 5, 5, 3, 320, 3, 1, 1},
                                {2, 16, 16, 64, 64, 3, 1, 1}};
    const mm_dtype dts[] = {MM_DTYPE_F32, MM_DTYPE_F16, MM_DTYPE_BF16};
    for (size_t d = 0; d < 3; d++)
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            int64_t B = cases[i][0], H = cases[i][1], W = cases[i][2], IC = cases[i][3], OC = cases[i][4], k = cases[i][5];
            int32_t s = (int32_t)cases[i][6], p = (int32_t)cases[i][7];
            int64_t Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1, ny = B * Ho * Wo * OC;
            mm_st_tensor st = conv_weight(dts[d], OC, IC, k);
            float *x = rand_f32(B * H * W * IC, 1.0f), *bias = rand_f32(OC, 0.5f);
            float *yf = malloc((size_t)ny * 4), *yr = malloc((size_t)ny * 4), *y1 = malloc((size_t)ny * 4);
            mm_tensor wf, wr, w1;
            EXPECT(fast_be->ops->weight_load(fast_be, &st, MM_WEIGHT_CONV, &wf) == MM_OK, "load: %s", mm_error_last());
            EXPECT(fast1_be->ops->weight_load(fast1_be, &st, MM_WEIGHT_CONV, &w1) == MM_OK, "load: %s", mm_error_last());
            EXPECT(ref_be->ops->weight_load(ref_be, &st, MM_WEIGHT_CONV, &wr) == MM_OK, "load: %s", mm_error_last());
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                const float *bp = with_bias ? bias : NULL;
                EXPECT(fast_be->ops->conv2d(fast_be, &wf, bp, x, yf, B, H, W, s, p) == MM_OK, "conv2d: %s", mm_error_last());
                EXPECT(ref_be->ops->conv2d(ref_be, &wr, bp, x, yr, B, H, W, s, p) == MM_OK, "conv2d ref: %s", mm_error_last());
                EXPECT(fast1_be->ops->conv2d(fast1_be, &w1, bp, x, y1, B, H, W, s, p) == MM_OK, "conv2d: %s", mm_error_last());
                double e = mm_nmse(yf, yr, ny);
                EXPECT(e < 1e-11, "conv2d %s case %zu bias %d nmse %g", mm_dtype_name(dts[d]), i, with_bias, e);
                EXPECT(memcmp(yf, y1, (size_t)ny * 4) == 0, "conv2d case %zu differs between 1 and 2 threads", i);
            }
            if (B == 2) { /* the second item alone gives the same bits */
                EXPECT(fast_be->ops->conv2d(fast_be, &wf, bias, x + H * W * IC, y1, 1, H, W, s, p) == MM_OK, "conv2d");
                EXPECT(memcmp(y1, yf + Ho * Wo * OC, (size_t)(Ho * Wo * OC) * 4) == 0,
                       "conv2d case %zu: an item depends on the batch", i);
            }
            fast_be->ops->weight_release(fast_be, &wf);
            fast1_be->ops->weight_release(fast1_be, &w1);
            ref_be->ops->weight_release(ref_be, &wr);
            free((void *)st.data), free(x), free(bias), free(yf), free(yr), free(y1);
        }
    /* a 3-D tensor is not a conv weight */
    mm_st_tensor bad = conv_weight(MM_DTYPE_F32, 4, 4, 1);
    bad.ndim = 3;
    mm_tensor t;
    EXPECT(fast_be->ops->weight_load(fast_be, &bad, MM_WEIGHT_CONV, &t) == MM_ERR_FORMAT, "3-D conv weight accepted");
    free((void *)bad.data);
}

static void test_groupnorm(void) {
    const int64_t cases[][4] = {{2, 64, 32, 8}, {1, 130, 48, 8}, {2, 1, 64, 32}, {1, 4096, 320, 32}, {2, 17, 6, 3}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t B = cases[i][0], HW = cases[i][1], C = cases[i][2];
        int32_t G = (int32_t)cases[i][3];
        int64_t n = B * HW * C;
        float *x = rand_f32(n, 2.0f), *w = rand_f32(C, 1.0f), *b = rand_f32(C, 1.0f);
        for (int64_t j = 0; j < n; j++) x[j] += 3.0f; /* a large mean, as after a residual add */
        float *yf = malloc((size_t)n * 4), *yr = malloc((size_t)n * 4), *y1 = malloc((size_t)n * 4);
        for (int silu = 0; silu < 2; silu++) {
            EXPECT(fast_be->ops->groupnorm(fast_be, x, w, b, yf, B, HW, C, G, 1e-5f, silu) == MM_OK, "%s", mm_error_last());
            ref_be->ops->groupnorm(ref_be, x, w, b, yr, B, HW, C, G, 1e-5f, silu);
            fast1_be->ops->groupnorm(fast1_be, x, w, b, y1, B, HW, C, G, 1e-5f, silu);
            double e = mm_nmse(yf, yr, n);
            EXPECT(e < 1e-11, "groupnorm case %zu silu %d nmse %g", i, silu, e);
            EXPECT(memcmp(yf, y1, (size_t)n * 4) == 0, "groupnorm case %zu differs between 1 and 2 threads", i);
        }
        /* in place */
        memcpy(y1, x, (size_t)n * 4);
        fast_be->ops->groupnorm(fast_be, y1, w, b, y1, B, HW, C, G, 1e-5f, 1);
        EXPECT(memcmp(yf, y1, (size_t)n * 4) == 0, "groupnorm in place differs");
        free(x), free(w), free(b), free(yf), free(yr), free(y1);
    }
    float one = 1.0f, w1 = 1.0f, b1 = 0.0f, y;
    EXPECT(fast_be->ops->groupnorm(fast_be, &one, &w1, &b1, &y, 1, 1, 1, 2, 1e-5f, 0) == MM_ERR_INVALID,
           "groups not dividing C accepted");
}

static void test_elementwise(void) {
    const int64_t B = 2, H = 5, W = 3, C = 7, n = B * H * W * C;
    float *x = rand_f32(n, 1.0f), *yf = malloc(4 * n * 4), *yr = malloc(4 * n * 4);
    fast_be->ops->upsample_nearest2x(fast_be, x, yf, B, H, W, C);
    ref_be->ops->upsample_nearest2x(ref_be, x, yr, B, H, W, C);
    EXPECT(memcmp(yf, yr, (size_t)(4 * n) * 4) == 0, "upsample_nearest2x differs");
    EXPECT(yr[((1 * 2 * H + 3) * 2 * W + 5) * C + 6] == x[((1 * H + 1) * W + 2) * C + 6], "upsample index");

    const int64_t N = 100003;
    float *a = rand_f32(N, 30.0f), *af = malloc(N * 4), *ar = malloc(N * 4);
    a[0] = 100.0f, a[1] = -100.0f, a[2] = 0.0f, a[3] = 88.5f, a[4] = -88.5f;
    const mm_activation acts[] = {MM_ACT_SILU, MM_ACT_RELU};
    for (int i = 0; i < 2; i++) {
        memcpy(af, a, N * 4), memcpy(ar, a, N * 4);
        EXPECT(fast_be->ops->activation(fast_be, af, N, acts[i]) == MM_OK, "activation");
        ref_be->ops->activation(ref_be, ar, N, acts[i]);
        double e = mm_nmse(af, ar, N);
        EXPECT(e < 1e-13, "activation %d nmse %g", i, e);
        float mx = 0;
        for (int64_t j = 0; j < N; j++) mx = fmaxf(mx, fabsf(af[j] - ar[j]) / fmaxf(1.0f, fabsf(ar[j])));
        EXPECT(mx < 1e-6f, "activation %d max relative error %g", i, mx);
    }
    EXPECT(fast_be->ops->activation(fast_be, af, 1, (mm_activation)7) == MM_ERR_INVALID, "unknown activation accepted");

    const int64_t M = 33, F = 129;
    float *g = rand_f32(M * 2 * F, 3.0f), *gf = malloc(M * F * 4), *gr = malloc(M * F * 4);
    fast_be->ops->geglu(fast_be, g, gf, M, F);
    ref_be->ops->geglu(ref_be, g, gr, M, F);
    EXPECT(mm_nmse(gf, gr, M * F) < 1e-13, "geglu nmse %g", mm_nmse(gf, gr, M * F));
    float two[2] = {2.0f, 1.0f}, out;
    ref_be->ops->geglu(ref_be, two, &out, 1, 1);
    EXPECT(fabsf(out - 2.0f * 0.8413447f) < 1e-6f, "geglu(2, 1) = %g", out);

    const int64_t Na = 5, Nb = 11;
    float *ca = rand_f32(M * Na, 1.0f), *cb = rand_f32(M * Nb, 1.0f);
    fast_be->ops->concat_cols(fast_be, ca, cb, gf, M, Na, Nb);
    ref_be->ops->concat_cols(ref_be, ca, cb, gr, M, Na, Nb);
    EXPECT(memcmp(gf, gr, (size_t)(M * (Na + Nb)) * 4) == 0, "concat_cols differs");
    EXPECT(gr[3 * (Na + Nb) + Na + 2] == cb[3 * Nb + 2] && gr[3 * (Na + Nb) + 1] == ca[3 * Na + 1], "concat_cols index");
    free(x), free(yf), free(yr), free(a), free(af), free(ar), free(g), free(gf), free(gr), free(ca), free(cb);
}

static void test_attention_dense(void) {
    /* batch, Tq, Tk, heads, head_dim, q scale (8: scores of +-100, softmax near one-hot) */
    const int64_t cases[][6] = {{2, 130, 77, 8, 40, 1}, {1, 200, 241, 2, 72, 1}, {2, 65, 130, 3, 13, 1},
                                {1, 64, 64, 2, 160, 1}, {1, 1, 1, 1, 1, 1},     {2, 70, 300, 1, 16, 8}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t B = cases[i][0], Tq = cases[i][1], Tk = cases[i][2], H = cases[i][3], hd = cases[i][4];
        int64_t nq = B * Tq * H * hd, nk = B * Tk * H * hd, row = H * hd;
        float *q = rand_f32(nq, (float)cases[i][5]), *k = rand_f32(nk, 1.0f), *v = rand_f32(nk, 1.0f);
        float *of = malloc(nq * 4), *orf = malloc(nq * 4), *o1 = malloc(nq * 4); /* [B, Tq, H, hd] */
        float scale = 1.0f / sqrtf((float)hd);
        EXPECT(fast_be->ops->attention_dense(fast_be, q, k, v, B, Tq, Tk, (int32_t)H, (int32_t)hd, scale, of) == MM_OK,
               "attention_dense case %zu", i);
        ref_be->ops->attention_dense(ref_be, q, k, v, B, Tq, Tk, (int32_t)H, (int32_t)hd, scale, orf);
        double e = mm_nmse(of, orf, nq);
        EXPECT(e < 1e-10, "attention_dense case %zu nmse %g", i, e);
        fast1_be->ops->attention_dense(fast1_be, q, k, v, B, Tq, Tk, (int32_t)H, (int32_t)hd, scale, o1);
        EXPECT(memcmp(of, o1, (size_t)nq * 4) == 0, "attention_dense case %zu differs between 1 and 2 threads", i);
        /* queries [i0, i0 + n) of the last problem alone, at other positions in the kernel's tiles */
        const int64_t spans[][2] = {{Tq - 1, 1}, {Tq / 3, Tq - Tq / 3}, {Tq / 2, (Tq + 3) / 4}};
        for (int sp = 0; sp < 3; sp++) {
            int64_t i0 = spans[sp][0], n = spans[sp][1], at = ((B - 1) * Tq + i0) * row;
            fast_be->ops->attention_dense(fast_be, q + at, k + (B - 1) * Tk * row, v + (B - 1) * Tk * row, 1, n, Tk,
                                          (int32_t)H, (int32_t)hd, scale, o1);
            EXPECT(memcmp(o1, of + at, (size_t)(n * row) * 4) == 0,
                   "attention_dense case %zu: queries %lld+%lld depend on the others", i, (long long)i0, (long long)n);
        }
        free(q), free(k), free(v), free(of), free(orf), free(o1);
    }
}

int main(void) {
    if (mm_backend_cpu_ref_init(&ref_be) != MM_OK || mm_backend_cpu_init(2, &fast_be) != MM_OK ||
        mm_backend_cpu_init(1, &fast1_be) != MM_OK) {
        fprintf(stderr, "backend init: %s\n", mm_error_last());
        return 1;
    }
    test_conv2d();
    test_groupnorm();
    test_elementwise();
    test_attention_dense();
    mm_backend_free(ref_be), mm_backend_free(fast_be), mm_backend_free(fast1_be);
    return mm_test_finish("test_decoder_ops");
}
