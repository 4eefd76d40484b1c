/* The q8 weight format (common/q8.h) and its matmul (kernels/cpu/gemm_q8.c): the
 * quantizer's round trip (each weight within half a step of its block's scale), the
 * AVX2 kernel against the plain reference (both see the same integers: the difference
 * is only the f32 summation order), batch invariance (a row's result bit-identical
 * whatever M or the thread count), and the int8 result against the f32 matmul of the
 * unquantized weights (the quantization error itself, bounded loosely). */
#include <math.h>
#include <string.h>

#include "common/q8.h"
#include "common/rng.h"
#include "kernels/backend.h"
#include "tests/testutil.h"

static uint64_t rng_state = 777;

static float frand(void) { return mm_rng_uniform(&rng_state) * 2.0f - 1.0f; }

/* A q8 weight through a backend's weight_load_q8, as the LLaMA loader does. */
static mm_tensor load_q8(mm_backend *be, const int8_t *q, const uint16_t *d, int64_t N, int64_t K) {
    mm_st_tensor w = {.name = "w.weight", .file = "test", .dtype = MM_DTYPE_I8, .ndim = 2, .shape = {N, K},
                      .numel = N * K, .data = q, .nbytes = (size_t)(N * K)};
    mm_st_tensor s = {.name = "w.weight_scale", .file = "test", .dtype = MM_DTYPE_F16, .ndim = 2,
                      .shape = {N, K / MM_Q8_BLOCK}, .numel = N * K / MM_Q8_BLOCK, .data = d,
                      .nbytes = (size_t)(N * K / MM_Q8_BLOCK) * 2};
    mm_tensor t;
    mm_status rc = be->ops->weight_load_q8(be, &w, &s, &t);
    EXPECT(rc == MM_OK, "weight_load_q8: %s", mm_error_last());
    return t;
}

static void test_shape(mm_backend *ref, mm_backend *fast1, mm_backend *fast2, int64_t N, int64_t K, int64_t M) {
    float *w = malloc((size_t)(N * K) * sizeof *w), *x = malloc((size_t)(M * K) * sizeof *x);
    for (int64_t i = 0; i < N * K; i++) w[i] = frand() * 0.05f * (1 + (i / MM_Q8_BLOCK) % 5); /* scales differ by block */
    for (int64_t i = 0; i < M * K; i++) x[i] = frand() * (i % 97 == 0 ? 8.0f : 1.0f);      /* some outliers */
    int8_t *q = malloc((size_t)(N * K));
    uint16_t *d = malloc((size_t)(N * K / MM_Q8_BLOCK) * 2);
    int64_t overflow = 0;
    for (int64_t n = 0; n < N; n++) overflow += mm_q8_quantize_row(w + n * K, K, q + n * K, d + n * (K / MM_Q8_BLOCK));
    EXPECT(overflow == 0, "%lld overflowing scales", (long long)overflow);
    double worst = 0;
    for (int64_t i = 0; i < N * K; i++) {
        float s = mm_f16_to_f32(d[i / MM_Q8_BLOCK]);
        double err = fabs((double)q[i] * s - w[i]) / s;
        worst = err > worst ? err : worst;
    }
    /* half a step, plus the f16 rounding of d (2^-11 relative) times |q| <= 127 */
    EXPECT(worst <= 0.5 + 127.0 / 2048 + 1e-3, "round trip: a weight is %.3f steps from its value", worst);

    mm_tensor tr = load_q8(ref, q, d, N, K), tf1 = load_q8(fast1, q, d, N, K), tf2 = load_q8(fast2, q, d, N, K);
    float *y_ref = malloc((size_t)(M * N) * sizeof(float)), *y1 = malloc((size_t)(M * N) * sizeof(float));
    float *y2 = malloc((size_t)(M * N) * sizeof(float)), *y_row = malloc((size_t)N * sizeof(float));
    float *y_f32 = calloc((size_t)(M * N), sizeof(float));
    EXPECT(ref->ops->matmul(ref, &tr, x, y_ref, M) == MM_OK, "ref: %s", mm_error_last());
    EXPECT(fast1->ops->matmul(fast1, &tf1, x, y1, M) == MM_OK, "fast: %s", mm_error_last());
    EXPECT(fast2->ops->matmul(fast2, &tf2, x, y2, M) == MM_OK, "fast 2 threads: %s", mm_error_last());
    /* fast vs reference: the same block integers, f32 sums in another order */
    double max_rel = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double mag = 0; /* sum of |terms| bounds the rounding of any order */
            for (int64_t k = 0; k < K; k++) mag += fabs((double)w[n * K + k] * x[m * K + k]);
            double rel = fabs((double)y1[m * N + n] - y_ref[m * N + n]) / (mag + 1e-30);
            max_rel = rel > max_rel ? rel : max_rel;
            for (int64_t k = 0; k < K; k++) y_f32[m * N + n] += w[n * K + k] * x[m * K + k];
        }
    EXPECT(max_rel < 1e-5, "N %lld K %lld M %lld: fast vs ref differ by %.3g of sum |w x|", (long long)N, (long long)K,
           (long long)M, max_rel);
    EXPECT(!memcmp(y1, y2, (size_t)(M * N) * sizeof(float)), "1 vs 2 threads differ (N %lld K %lld M %lld)",
           (long long)N, (long long)K, (long long)M);
    int inv = 1;
    for (int64_t m = 0; m < M; m++) {
        EXPECT(fast2->ops->matmul(fast2, &tf2, x + m * K, y_row, 1) == MM_OK, "row: %s", mm_error_last());
        inv &= !memcmp(y_row, y1 + m * N, (size_t)N * sizeof(float));
    }
    EXPECT(inv, "a row alone differs from the same row in M = %lld (N %lld K %lld)", (long long)M, (long long)N,
           (long long)K);
    /* int8 weights and activations vs exact f32: Q8_0 x Q8_0's error, ~1e-4 NMSE here */
    double nmse = mm_nmse(y_ref, y_f32, M * N);
    EXPECT(nmse < 2e-3, "q8 vs f32 NMSE %.3g", nmse);
    fprintf(stderr, "N %lld K %lld M %lld: fast-vs-ref %.2g, q8-vs-f32 NMSE %.2g\n", (long long)N, (long long)K,
            (long long)M, max_rel, nmse);
    ref->ops->weight_release(ref, &tr), fast1->ops->weight_release(fast1, &tf1), fast2->ops->weight_release(fast2, &tf2);
    free(w), free(x), free(q), free(d), free(y_ref), free(y1), free(y2), free(y_row), free(y_f32);
}

int main(void) {
    mm_backend *ref, *fast1, *fast2;
    if (mm_backend_cpu_ref_init(&ref) != MM_OK || mm_backend_cpu_init(1, &fast1) != MM_OK ||
        mm_backend_cpu_init(2, &fast2) != MM_OK) {
        fprintf(stderr, "backend: %s\n", mm_error_last());
        return 1;
    }
    test_shape(ref, fast1, fast2, 1, 32, 1);
    test_shape(ref, fast1, fast2, 37, 96, 7);
    test_shape(ref, fast1, fast2, 130, 352, 19); /* tiny model's MLP width */
    test_shape(ref, fast1, fast2, 64, 768, 16);
    /* the loader's shape checks */
    int8_t q[64] = {0};
    uint16_t d[4] = {0};
    mm_st_tensor w = {.name = "bad.weight", .file = "test", .dtype = MM_DTYPE_I8, .ndim = 2, .shape = {2, 20},
                      .numel = 40, .data = q, .nbytes = 40};
    mm_st_tensor s = {.name = "bad.weight_scale", .file = "test", .dtype = MM_DTYPE_F16, .ndim = 2, .shape = {2, 1},
                      .numel = 2, .data = d, .nbytes = 4};
    mm_tensor t;
    EXPECT_ERR(fast1->ops->weight_load_q8(fast1, &w, &s, &t), MM_ERR_FORMAT, "bad.weight", "multiple of 32");
    w.shape[1] = 32, s.dtype = MM_DTYPE_F32;
    EXPECT_ERR(fast1->ops->weight_load_q8(fast1, &w, &s, &t), MM_ERR_FORMAT, "bad.weight_scale", "F16");
    ref->ops->free(ref), fast1->ops->free(fast1), fast2->ops->free(fast2);
    return mm_test_finish("test_q8");
}
