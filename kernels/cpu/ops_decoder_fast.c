/* Fast CPU ops of the diffusion decoder: convolution through oneDNN (conv_dnnl.c),
 * OpenMP over independent rows or pixel blocks, vectorisable loops (vmath.h's polynomial
 * exp and erfc instead of libm's scalar calls). Every output element is computed in an order that
 * depends only on the shapes, never on the thread count, so results are identical
 * with 1 and N threads. Must stay numerically close to ops_decoder_ref.c. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "cpu_ops.h"
#include "vec16.h"  /* MM_VEC_CLONES */
#include "vmath.h"

/* Pixels per group-norm statistics block: partial sums are per (block, channel) and are
 * combined in block order, so the sum order is fixed whatever the thread count. */
#define GN_BLOCK 64


mm_status mm_cpu_fast_conv2d(mm_backend *be, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                             int64_t H, int64_t W, int32_t stride, int32_t pad) {
    mm_dnnl_conv *c = mm_cpu_ctx(be)->conv;
    if (!c) return MM_ERROR(MM_ERR_INTERNAL, "conv2d: backend has no oneDNN convolution context");
    return mm_dnnl_conv2d(c, w, bias, x, y, B, H, W, stride, pad);
}

MM_VEC_CLONES static void gn_block_sums(const float *x, int64_t n_pix, int64_t C, const float *center, double *out) {
    float acc[C];
    for (int64_t c = 0; c < C; c++) acc[c] = 0.0f;
    if (center) {
        for (int64_t p = 0; p < n_pix; p++)
            for (int64_t c = 0; c < C; c++) {
                float d = x[p * C + c] - center[c];
                acc[c] += d * d;
            }
    } else {
        for (int64_t p = 0; p < n_pix; p++)
            for (int64_t c = 0; c < C; c++) acc[c] += x[p * C + c];
    }
    for (int64_t c = 0; c < C; c++) out[c] = acc[c];
}

MM_VEC_CLONES static void gn_apply(const float *x, float *y, int64_t n_pix, int64_t C, const float *scale,
                                   const float *shift, int silu) {
    for (int64_t p = 0; p < n_pix; p++) {
        const float *xr = x + p * C;
        float *yr = y + p * C;
        if (silu) {
            for (int64_t c = 0; c < C; c++) yr[c] = silu_poly(xr[c] * scale[c] + shift[c]);
        } else {
            for (int64_t c = 0; c < C; c++) yr[c] = xr[c] * scale[c] + shift[c];
        }
    }
}

/* Per (b, group): mean over blocks of partial per-channel sums (float within a block of
 * GN_BLOCK pixels, double across blocks), then the centred second moment the same way.
 * The normalisation folds into y = x * scale[c] + shift[c]. */
mm_status mm_cpu_fast_groupnorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t B,
                                int64_t HW, int64_t C, int32_t groups, float eps, int silu) {
    if (groups <= 0 || C % groups) return MM_ERROR(MM_ERR_INVALID, "groupnorm: %lld channels not divisible by %d groups",
                                                   (long long)C, groups);
    int64_t cg = C / groups, nblk = (HW + GN_BLOCK - 1) / GN_BLOCK;
    /* scratch: partial [B, nblk, C] double, then center/scale/shift [B, C] float */
    size_t bytes = (size_t)(B * nblk * C) * sizeof(double) + 3 * (size_t)(B * C) * sizeof(float);
    double *partial;
    CHECK(mm_cpu_scratch(be, bytes, (void **)&partial));
    float *center = (float *)(partial + B * nblk * C), *scale = center + B * C, *shift = scale + B * C;
    for (int pass = 0; pass < 2; pass++) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (B * HW * C > 65536)
        for (int64_t i = 0; i < B * nblk; i++) {
            int64_t bt = i / nblk, p0 = (i % nblk) * GN_BLOCK, n = HW - p0 < GN_BLOCK ? HW - p0 : GN_BLOCK;
            gn_block_sums(x + (bt * HW + p0) * C, n, C, pass ? center + bt * C : NULL, partial + i * C);
        }
        for (int64_t bt = 0; bt < B; bt++)
            for (int32_t g = 0; g < groups; g++) {
                double s = 0.0;
                for (int64_t k = 0; k < nblk; k++)
                    for (int64_t c = g * cg; c < (g + 1) * cg; c++) s += partial[(bt * nblk + k) * C + c];
                s /= (double)(HW * cg);
                for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
                    if (!pass) {
                        center[bt * C + c] = (float)s;
                    } else {
                        float inv = (float)(1.0 / sqrt(s + eps));
                        scale[bt * C + c] = inv * w[c];
                        shift[bt * C + c] = b[c] - center[bt * C + c] * inv * w[c];
                    }
                }
            }
    }
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (B * HW * C > 65536)
    for (int64_t i = 0; i < B * nblk; i++) {
        int64_t bt = i / nblk, p0 = (i % nblk) * GN_BLOCK, n = HW - p0 < GN_BLOCK ? HW - p0 : GN_BLOCK;
        gn_apply(x + (bt * HW + p0) * C, y + (bt * HW + p0) * C, n, C, scale + bt * C, shift + bt * C, silu);
    }
    return MM_OK;
}

mm_status mm_cpu_fast_upsample_nearest2x(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                         int64_t C) {
    size_t row = (size_t)C * sizeof(float);
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (B * H * W * C > 65536)
    for (int64_t i = 0; i < B * H; i++) {
        int64_t bt = i / H, iy = i % H;
        const float *xr = x + i * W * C;
        float *y0 = y + ((bt * 2 * H + 2 * iy) * 2 * W) * C, *y1 = y0 + 2 * W * C;
        for (int64_t ix = 0; ix < W; ix++) {
            memcpy(y0 + 2 * ix * C, xr + ix * C, row);
            memcpy(y0 + (2 * ix + 1) * C, xr + ix * C, row);
        }
        memcpy(y1, y0, 2 * W * row);
    }
    return MM_OK;
}

MM_VEC_CLONES static void act_run(float *x, int64_t n, mm_activation act) {
    if (act == MM_ACT_SILU) {
        for (int64_t i = 0; i < n; i++) x[i] = silu_poly(x[i]);
    } else {
        for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
    }
}

mm_status mm_cpu_fast_activation(mm_backend *be, float *x, int64_t n, mm_activation act) {
    if (act != MM_ACT_SILU && act != MM_ACT_RELU) return MM_ERROR(MM_ERR_INVALID, "activation: unknown kind %d", (int)act);
    const int64_t chunk = 16384;
    int64_t n_chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n_chunks; i++) act_run(x + i * chunk, n - i * chunk < chunk ? n - i * chunk : chunk, act);
    return MM_OK;
}

MM_VEC_CLONES static void geglu_row(const float *h, const float *g, float *y, int64_t F) {
    for (int64_t f = 0; f < F; f++) y[f] = h[f] * gelu_erf_poly(g[f]);
}

mm_status mm_cpu_fast_geglu(mm_backend *be, const float *x, float *y, int64_t M, int64_t F) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * F > 65536)
    for (int64_t m = 0; m < M; m++) geglu_row(x + m * 2 * F, x + m * 2 * F + F, y + m * F, F);
    return MM_OK;
}

mm_status mm_cpu_fast_concat_cols(mm_backend *be, const float *a, const float *b, float *y, int64_t M, int64_t Na,
                                  int64_t Nb) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * (Na + Nb) > 65536)
    for (int64_t m = 0; m < M; m++) {
        memcpy(y + m * (Na + Nb), a + m * Na, (size_t)Na * sizeof(float));
        memcpy(y + m * (Na + Nb) + Na, b + m * Nb, (size_t)Nb * sizeof(float));
    }
    return MM_OK;
}
