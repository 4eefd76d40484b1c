/* A batch-invariant GEMM of our own, for CPUs where oneDNN's is not: on AVX2-only CPUs
 * (measured on an AMD EPYC without AVX-512) oneDNN 2.6 sums an M = 1 row in another
 * order than the same row inside a larger M, and has no bf16 matmul at all.
 *
 * y[m, n] = sum_k x[m, k] w[n, k], with every output element summed in one fixed order
 * (16 lanes over k in steps of 16, the lanes added 0..15, then the K tail), whatever M,
 * the tile of rows it falls in, or the thread that computes it: batch invariance by
 * construction. Weights stay in the checkpoint layout [N, K] (mapped, not packed), f32
 * or bf16 widened on the fly; activations stay f32 (oneDNN's bf16 path rounds them to
 * bf16 for its AMX/AVX512-BF16 kernels; here that would cost accuracy and buy nothing,
 * so a bf16 checkpoint's logits are as close to exact arithmetic as cpu-ref's).
 *
 * Tiles of ROWS rows of x share each load of a weight chunk; threads split the columns,
 * so each thread streams its own slice of W once per tile of rows. */
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "vec16.h"

#define ROWS 4          /* rows of x per tile */
#define COLS_PER_TASK 8 /* columns of y (rows of W) per unit of thread work */

/* 8-lane vectors: one AVX2 register (GCC lowers 64-byte vectors on AVX2 through memory,
 * ~20x slower here). An output's 16 lanes are two of them, lo = lanes 0..7, hi = 8..15. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8_unaligned __attribute__((vector_size(32), aligned(4)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h_unaligned __attribute__((vector_size(16), aligned(2)));

/* Vectors go by pointer: a by-value AVX vector would draw -Wpsabi notes in the default clone. */
MM_V16_INLINE void load_w8(const void *w, mm_dtype dt, int64_t at, v8 *out) {
    if (dt == MM_DTYPE_BF16)
        *out = (v8)(__builtin_convertvector(*(const v8h_unaligned *)((const uint16_t *)w + at), v8u) << 16);
    else
        *out = *(const v8_unaligned *)((const float *)w + at);
}

MM_V16_INLINE float load_w1(const void *w, mm_dtype dt, int64_t at) {
    if (dt != MM_DTYPE_BF16) return ((const float *)w)[at];
    uint32_t u = (uint32_t)((const uint16_t *)w)[at] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The lanes 0..15 added in order, then the K tail of one output. */
MM_V16_INLINE float finish(const v8 *lo, const v8 *hi, const float *xr, const void *w, mm_dtype dt, int64_t row,
                           int64_t k, int64_t K) {
    float l[16], s = 0.0f;
    memcpy(l, lo, sizeof *lo), memcpy(l + 8, hi, sizeof *hi);
    for (int i = 0; i < 16; i++) s += l[i];
    for (int64_t t = k; t < K; t++) s += xr[t] * load_w1(w, dt, row + t);
    return s;
}

/* out[r * out_stride] = x[r, :] . w[n, :] for r < R (R a constant at each call site, so
 * the unused accumulators vanish and the used ones live in registers; every output runs
 * the same arithmetic whatever R). */
MM_V16_INLINE void dot_tile(const int R, const float *x, int64_t K, const void *w, mm_dtype dt, int64_t n, float *out,
                            int64_t out_stride) {
    v8 a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0}, a2 = {0}, b2 = {0}, a3 = {0}, b3 = {0};
    const int64_t row = n * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        v8 wl, wh;
        load_w8(w, dt, row + k, &wl);
        load_w8(w, dt, row + k + 8, &wh);
#define ROW_FMA(r, a, b)                                                  \
    if (R > r) {                                                          \
        a += *(const v8_unaligned *)(x + r * K + k) * wl;                 \
        b += *(const v8_unaligned *)(x + r * K + k + 8) * wh;             \
    }
        ROW_FMA(0, a0, b0)
        ROW_FMA(1, a1, b1)
        ROW_FMA(2, a2, b2)
        ROW_FMA(3, a3, b3)
#undef ROW_FMA
    }
    out[0] = finish(&a0, &b0, x, w, dt, row, k, K);
    if (R > 1) out[out_stride] = finish(&a1, &b1, x + K, w, dt, row, k, K);
    if (R > 2) out[2 * out_stride] = finish(&a2, &b2, x + 2 * K, w, dt, row, k, K);
    if (R > 3) out[3 * out_stride] = finish(&a3, &b3, x + 3 * K, w, dt, row, k, K);
}

MM_VEC_CLONES static void gemm_task(const float *x, const void *w, mm_dtype dt, float *y, int64_t M, int64_t K, int64_t N,
                                    int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; m += ROWS) {
        int64_t R = M - m < ROWS ? M - m : ROWS;
        const float *xm = x + m * K;
        float *ym = y + m * N;
        for (int64_t n = n0; n < n1; n++) {
            switch (R) {
            case 4: dot_tile(4, xm, K, w, dt, n, ym + n, N); break;
            case 3: dot_tile(3, xm, K, w, dt, n, ym + n, N); break;
            case 2: dot_tile(2, xm, K, w, dt, n, ym + n, N); break;
            default: dot_tile(1, xm, K, w, dt, n, ym + n, N); break;
            }
        }
    }
}

mm_status mm_cpu_rows_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    const int64_t N = w->shape[0], K = w->shape[1];
    if (w->dtype != MM_DTYPE_F32 && w->dtype != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "matmul: weight dtype %s", mm_dtype_name(w->dtype));
    if (M <= 0) return MM_OK;
    const int64_t tasks = (N + COLS_PER_TASK - 1) / COLS_PER_TASK;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * N * K > 65536)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n0 = t * COLS_PER_TASK, n1 = n0 + COLS_PER_TASK < N ? n0 + COLS_PER_TASK : N;
        gemm_task(x, w->data, w->dtype, y, M, K, N, n0, n1);
    }
    return MM_OK;
}

int mm_cpu_gemm_uses_dnnl(void) {
    const char *e = getenv("MM_CPU_GEMM");
    if (e && !strcmp(e, "dnnl")) return 1;
    if (e && !strcmp(e, "rows")) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f"); /* where oneDNN's row results were measured invariant */
}
