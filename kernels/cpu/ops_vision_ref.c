/* Reference CPU ops of the vision encoder: patch extraction (the SigLIP patch conv is
 * patchify + matmul) and the bilinear resize of MetaMorph's token reduction. Plain
 * loops stating the maths; ops_vision_fast.c must match them. */
#include <math.h>

#include "cpu_ops.h"

mm_status mm_cpu_ref_patchify(mm_backend *be, const float *x, float *y, int64_t B, int64_t C, int64_t H, int64_t W,
                              int32_t p) {
    if (p <= 0 || H < p || W < p) return MM_ERROR(MM_ERR_INVALID, "patchify: %lldx%lld smaller than patch %d", (long long)H, (long long)W, p);
    int64_t gh = H / p, gw = W / p, K = C * p * p;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < gh; i++)
            for (int64_t j = 0; j < gw; j++) {
                float *row = y + ((b * gh + i) * gw + j) * K;
                for (int64_t c = 0; c < C; c++)
                    for (int32_t ky = 0; ky < p; ky++)
                        for (int32_t kx = 0; kx < p; kx++)
                            row[(c * p + ky) * p + kx] = x[((b * C + c) * H + i * p + ky) * W + j * p + kx];
            }
    return MM_OK;
}

/* torch's source index for align_corners=False: max(scale * (dst + 0.5) - 0.5, 0) in
 * f32 with scale = in / out, then the lower tap, the upper tap (clamped) and the weight. */
void mm_cpu_bilinear_taps(int64_t in, int64_t out, int64_t dst, int64_t *i0, int64_t *i1, float *lambda) {
    float scale = (float)in / (float)out;
    float src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int64_t lo = (int64_t)floorf(src);
    if (lo > in - 1) lo = in - 1;
    float l = src - (float)lo;
    *i0 = lo;
    *i1 = lo + (lo < in - 1 ? 1 : 0);
    *lambda = l < 0.0f ? 0.0f : l > 1.0f ? 1.0f : l;
}

mm_status mm_cpu_ref_resize_bilinear(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                     int64_t C, int64_t Ho, int64_t Wo) {
    if (H <= 0 || W <= 0 || Ho <= 0 || Wo <= 0) return MM_ERROR(MM_ERR_INVALID, "resize_bilinear: empty size");
    for (int64_t b = 0; b < B; b++)
        for (int64_t oy = 0; oy < Ho; oy++) {
            int64_t y0, y1;
            float ly;
            mm_cpu_bilinear_taps(H, Ho, oy, &y0, &y1, &ly);
            for (int64_t ox = 0; ox < Wo; ox++) {
                int64_t x0, x1;
                float lx;
                mm_cpu_bilinear_taps(W, Wo, ox, &x0, &x1, &lx);
                const float *r0 = x + (b * H + y0) * W * C, *r1 = x + (b * H + y1) * W * C;
                float *o = y + ((b * Ho + oy) * Wo + ox) * C;
                for (int64_t c = 0; c < C; c++) {
                    /* torch's order: rows first blended along x, then along y */
                    float t0 = r0[x0 * C + c] * (1.0f - lx) + r0[x1 * C + c] * lx;
                    float t1 = r1[x0 * C + c] * (1.0f - lx) + r1[x1 * C + c] * lx;
                    o[c] = t0 * (1.0f - ly) + t1 * ly;
                }
            }
        }
    return MM_OK;
}
