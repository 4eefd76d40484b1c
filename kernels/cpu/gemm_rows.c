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

MM_V16_INLINE void load_w16(const void *w, mm_dtype dt, int64_t at, v16 *out) {
    if (dt == MM_DTYPE_BF16) {
        v16h h;
        memcpy(&h, (const uint16_t *)w + at, sizeof h);
        v16u u = __builtin_convertvector(h, v16u) << 16;
        memcpy(out, &u, sizeof *out);
    } else {
        memcpy(out, (const float *)w + at, sizeof *out);
    }
}

MM_V16_INLINE float load_w1(const void *w, mm_dtype dt, int64_t at) {
    if (dt != MM_DTYPE_BF16) return ((const float *)w)[at];
    uint32_t u = (uint32_t)((const uint16_t *)w)[at] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* out[r] = x[r, :] . w[n, :] for r < R (R a constant at each call site, so every tile
 * size gets its own unrolled code with the same per-element arithmetic). */
MM_V16_INLINE void dot_tile(const int R, const float *x, int64_t K, const void *w, mm_dtype dt, int64_t n, float *out,
                            int64_t out_stride) {
    v16 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = (v16){0};
    const int64_t row = n * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        v16 wv;
        load_w16(w, dt, row + k, &wv);
        for (int r = 0; r < R; r++) {
            v16 xv;
            memcpy(&xv, x + r * K + k, sizeof xv);
            acc[r] += xv * wv;
        }
    }
    for (int r = 0; r < R; r++) {
        float s = 0.0f;
        for (int l = 0; l < 16; l++) s += acc[r][l];
        for (int64_t t = k; t < K; t++) s += x[r * K + t] * load_w1(w, dt, row + t);
        out[r * out_stride] = s;
    }
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
