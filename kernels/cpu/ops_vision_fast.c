/* Fast CPU ops of the vision encoder: the reference loops of ops_vision_ref.c spread
 * over threads by output row (patch or pixel), with contiguous inner loops. Each output
 * element is computed exactly as in the reference, so the results are bit-identical
 * to it and independent of the batch and the thread count. */
#include <string.h>

#include "cpu_backend.h"
#include "cpu_ops.h"

mm_status mm_cpu_fast_patchify(mm_backend *be, const float *x, float *y, int64_t B, int64_t C, int64_t H, int64_t W,
                               int32_t p) {
    if (p <= 0 || H < p || W < p) return MM_ERROR(MM_ERR_INVALID, "patchify: %lldx%lld smaller than patch %d", (long long)H, (long long)W, p);
    int64_t gh = H / p, gw = W / p, K = C * p * p, rows = B * gh * gw;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (rows * K > 65536)
    for (int64_t r = 0; r < rows; r++) {
        int64_t b = r / (gh * gw), i = r / gw % gh, j = r % gw;
        float *row = y + r * K;
        for (int64_t c = 0; c < C; c++)
            for (int32_t ky = 0; ky < p; ky++)
                memcpy(row + (c * p + ky) * p, x + ((b * C + c) * H + i * p + ky) * W + j * p, (size_t)p * sizeof(float));
    }
    return MM_OK;
}

mm_status mm_cpu_fast_resize_bilinear(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                      int64_t C, int64_t Ho, int64_t Wo) {
    if (H <= 0 || W <= 0 || Ho <= 0 || Wo <= 0) return MM_ERROR(MM_ERR_INVALID, "resize_bilinear: empty size");
    int64_t n = B * Ho * Wo;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n * C > 65536)
    for (int64_t r = 0; r < n; r++) {
        int64_t b = r / (Ho * Wo), oy = r / Wo % Ho, ox = r % Wo, y0, y1, x0, x1;
        float ly, lx;
        mm_cpu_bilinear_taps(H, Ho, oy, &y0, &y1, &ly);
        mm_cpu_bilinear_taps(W, Wo, ox, &x0, &x1, &lx);
        const float *a = x + ((b * H + y0) * W + x0) * C, *bq = x + ((b * H + y0) * W + x1) * C;
        const float *c0 = x + ((b * H + y1) * W + x0) * C, *d = x + ((b * H + y1) * W + x1) * C;
        float *o = y + r * C;
        float wx0 = 1.0f - lx, wy0 = 1.0f - ly;
        for (int64_t c = 0; c < C; c++) {
            float t0 = a[c] * wx0 + bq[c] * lx;
            float t1 = c0[c] * wx0 + d[c] * lx;
            o[c] = t0 * wy0 + t1 * ly;
        }
    }
    return MM_OK;
}
