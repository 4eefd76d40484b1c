/* Dense (unmasked) attention of the fast CPU backend, flash style: for one (problem,
 * head, tile of 64 queries) the scores of a tile of keys stay in L1, an online softmax
 * rescales the running output, and nothing is [Tq, Tk]-sized. Everything is vectorised
 * across the 64 queries (4 vectors of 16 lanes): S^T = K Q^T and O^T += V^T P^T are
 * register-blocked FMA kernels that broadcast K and V straight from their strided
 * [batch, Tk, H, hd] layout, so only the query tile is transposed (once per task).
 * Batch invariance by construction: every query is one lane, and every lane runs the
 * same instruction stream whatever the other lanes hold (a short last tile is padded
 * with zero queries), so a row's bits depend on neither Tq, the batch nor threads. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu_backend.h"
#include "cpu_ops.h"
#include "vec16.h"

#define QV 4           /* query vectors per tile */
#define QT (16 * QV)   /* queries per tile (lanes) */
#define KT 120         /* keys per tile: scores [KT, QT] f32 = 30 KiB */
#define RB 6           /* register block: keys of S^T, or head dims of O^T, per pass */

/* s[r][c] = sum_d qt[d][c] k_r[d] for RB keys (rows of a [*, H, hd] tensor); mx[c] takes
 * the max of the new scores. */
static inline __attribute__((always_inline)) void scores_block(const v16 *qt, const float *const kr[RB], int32_t hd,
                                                               v16 *s, v16 *mx) {
    v16 acc[RB][QV];
#pragma GCC unroll 6
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
        for (int c = 0; c < QV; c++) acc[r][c] = (v16){0};
    for (int32_t d = 0; d < hd; d++) {
#pragma GCC unroll 6
        for (int r = 0; r < RB; r++) {
            float kd = kr[r][d];
#pragma GCC unroll 4
            for (int c = 0; c < QV; c++) acc[r][c] += qt[d * QV + c] * kd;
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
        for (int c = 0; c < QV; c++) s[r * QV + c] = acc[r][c], vmax_into(&mx[c], &acc[r][c]);
}

/* ot[d0 + r][c] = ot[d0 + r][c] * alpha[c] + sum_j p[j][c] v_j[d0 + r], r < rows (a
 * constant), over the kt keys of the tile. */
static inline __attribute__((always_inline)) void values_block(const v16 *p, const float *v0, int64_t vstride,
                                                               int32_t kt, int32_t d0, int rows, const v16 *alpha,
                                                               v16 *ot) {
    v16 acc[RB][QV];
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int c = 0; c < QV; c++) acc[r][c] = ot[(d0 + r) * QV + c] * alpha[c];
    for (int32_t j = 0; j < kt; j++) {
        const float *vr = v0 + j * vstride + d0;
#pragma GCC unroll 6
        for (int r = 0; r < rows; r++) {
            float vd = vr[r];
#pragma GCC unroll 4
            for (int c = 0; c < QV; c++) acc[r][c] += p[j * QV + c] * vd;
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int c = 0; c < QV; c++) ot[(d0 + r) * QV + c] = acc[r][c];
}

/* Per-thread scratch of one task, in v16 units. */
static size_t task_vectors(int32_t hd) { return (size_t)(2 * hd + KT + RB) * QV; }

/* One (problem, head, query tile): q, k, v, out point at the head's first element of
 * row 0; rows are `stride` floats apart; n <= QT queries, Tk keys. */
MM_VEC_CLONES static void attend_tile(const float *q, const float *k, const float *v, int64_t stride, int32_t n,
                                      int64_t Tk, int32_t hd, float scale, v16 *buf, float *out) {
    v16 *qt = buf, *ot = qt + (size_t)hd * QV, *s = ot + (size_t)hd * QV; /* qt, ot [hd][QV]; s [KT + RB][QV] */
    v16 m[QV], l[QV];                                /* running max and sum of each query (log2 units) */
    const float c = scale * 1.4426950408889634f;     /* scores in log2 units: exp -> exp2 */
    for (int32_t d = 0; d < hd; d++)
        for (int32_t i = 0; i < QT; i++) ((float *)(qt + d * QV))[i] = i < n ? q[i * stride + d] * c : 0.0f;
    memset(ot, 0, (size_t)hd * QV * sizeof(v16));
    for (int cq = 0; cq < QV; cq++) m[cq] = (v16){0} - INFINITY, l[cq] = (v16){0};
    for (int64_t j0 = 0; j0 < Tk; j0 += KT) {
        int32_t kt = (int32_t)(Tk - j0 < KT ? Tk - j0 : KT);
        v16 mx[QV], alpha[QV], sum[QV];
        for (int cq = 0; cq < QV; cq++) mx[cq] = m[cq], sum[cq] = (v16){0};
        for (int32_t jb = 0; jb < kt; jb += RB) { /* a short last block repeats key kt - 1 */
            const float *kr[RB];
            for (int r = 0; r < RB; r++) kr[r] = k + (j0 + (jb + r < kt ? jb + r : kt - 1)) * stride;
            scores_block(qt, kr, hd, s + jb * QV, mx);
        }
        for (int cq = 0; cq < QV; cq++) alpha[cq] = m[cq] - mx[cq], exp2_neg(&alpha[cq]);
        for (int32_t j = 0; j < kt; j++)
            for (int cq = 0; cq < QV; cq++) {
                s[j * QV + cq] -= mx[cq];
                exp2_neg(&s[j * QV + cq]);
                sum[cq] += s[j * QV + cq];
            }
        for (int cq = 0; cq < QV; cq++) l[cq] = l[cq] * alpha[cq] + sum[cq], m[cq] = mx[cq];
        const float *vt = v + j0 * stride;
        int32_t d0 = 0;
        for (; d0 + RB <= hd; d0 += RB) values_block(s, vt, stride, kt, d0, RB, alpha, ot);
        switch (hd - d0) { /* the same per-lane arithmetic with fewer rows */
        case 5: values_block(s, vt, stride, kt, d0, 5, alpha, ot); break;
        case 4: values_block(s, vt, stride, kt, d0, 4, alpha, ot); break;
        case 3: values_block(s, vt, stride, kt, d0, 3, alpha, ot); break;
        case 2: values_block(s, vt, stride, kt, d0, 2, alpha, ot); break;
        case 1: values_block(s, vt, stride, kt, d0, 1, alpha, ot); break;
        default: break;
        }
    }
    const float *lf = (const float *)l;
    for (int32_t i = 0; i < n; i++) {
        float inv = 1.0f / lf[i];
        for (int32_t d = 0; d < hd; d++) out[i * stride + d] = ((const float *)(ot + d * QV))[i] * inv;
    }
}

mm_status mm_cpu_fast_attention_dense(mm_backend *be, const float *q, const float *k, const float *v, int64_t batch,
                                      int64_t Tq, int64_t Tk, int32_t H, int32_t hd, float scale, float *out) {
    if (batch <= 0 || Tq <= 0 || H <= 0 || hd <= 0) return MM_OK;
    if (Tk <= 0) { /* no keys: an empty weighted sum, like the reference */
        memset(out, 0, (size_t)(batch * Tq * H * hd) * sizeof(float));
        return MM_OK;
    }
    int64_t tiles = (Tq + QT - 1) / QT, tasks = batch * H * tiles, stride = (int64_t)H * hd;
    size_t per_thread = task_vectors(hd);
    v16 *scratch; /* [n_threads][per_thread] */
    CHECK(mm_cpu_scratch(be, (size_t)be->n_threads * per_thread * sizeof(v16), (void **)&scratch));
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t bt = t / (H * tiles), h = t / tiles % H, i0 = t % tiles * QT;
        int32_t n = (int32_t)(Tq - i0 < QT ? Tq - i0 : QT);
        int64_t qo = (bt * Tq + i0) * stride + h * hd, ko = bt * Tk * stride + h * hd;
        attend_tile(q + qo, k + ko, v + ko, stride, n, Tk, hd, scale, scratch + (size_t)omp_get_thread_num() * per_thread,
                    out + qo);
    }
    return MM_OK;
}
