/* Reference CPU ops of the diffusion decoder (UNet, VAE): the plainest loops that
 * state each op's maths, single-threaded, accumulating in index order (group-norm
 * statistics in double). The fast versions in ops_decoder_fast.c are checked against
 * these. Not for speed. Images are channels-last [B, H, W, C]. */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"

mm_status mm_cpu_ref_conv2d(mm_backend *be, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                            int64_t H, int64_t W, int32_t stride, int32_t pad) {
    int64_t OC = w->shape[0], IC = w->shape[1], k = w->shape[2];
    if (w->ndim != 4 || w->shape[3] != k || stride <= 0 || pad < 0)
        return MM_ERROR(MM_ERR_INVALID, "conv2d: weight must be [OC, IC, k, k], stride > 0, pad >= 0");
    int64_t Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    for (int64_t b = 0; b < B; b++)
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++)
                for (int64_t oc = 0; oc < OC; oc++) {
                    float acc = bias ? bias[oc] : 0.0f;
                    for (int64_t ky = 0; ky < k; ky++) {
                        int64_t iy = oy * stride - pad + ky;
                        if (iy < 0 || iy >= H) continue;
                        for (int64_t kx = 0; kx < k; kx++) {
                            int64_t ix = ox * stride - pad + kx;
                            if (ix < 0 || ix >= W) continue;
                            const float *xp = x + ((b * H + iy) * W + ix) * IC;
                            for (int64_t ic = 0; ic < IC; ic++)
                                acc += xp[ic] * mm_cpu_load_elem(w->dtype, w->data, ((oc * IC + ic) * k + ky) * k + kx);
                        }
                    }
                    y[((b * Ho + oy) * Wo + ox) * OC + oc] = acc;
                }
    return MM_OK;
}

mm_status mm_cpu_ref_groupnorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t B,
                               int64_t HW, int64_t C, int32_t groups, float eps, int silu) {
    if (groups <= 0 || C % groups) return MM_ERROR(MM_ERR_INVALID, "groupnorm: %lld channels not divisible by %d groups",
                                                   (long long)C, groups);
    int64_t cg = C / groups;
    for (int64_t bt = 0; bt < B; bt++) {
        const float *xb = x + bt * HW * C;
        float *yb = y + bt * HW * C;
        for (int32_t g = 0; g < groups; g++) {
            double mean = 0.0, var = 0.0;
            for (int64_t p = 0; p < HW; p++)
                for (int64_t c = g * cg; c < (g + 1) * cg; c++) mean += xb[p * C + c];
            mean /= (double)(HW * cg);
            for (int64_t p = 0; p < HW; p++)
                for (int64_t c = g * cg; c < (g + 1) * cg; c++) var += (xb[p * C + c] - mean) * (xb[p * C + c] - mean);
            var /= (double)(HW * cg);
            float m = (float)mean, inv = (float)(1.0 / sqrt(var + eps));
            for (int64_t p = 0; p < HW; p++)
                for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
                    float v = (xb[p * C + c] - m) * inv * w[c] + b[c];
                    yb[p * C + c] = silu ? v / (1.0f + expf(-v)) : v;
                }
        }
    }
    return MM_OK;
}

mm_status mm_cpu_ref_upsample_nearest2x(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                        int64_t C) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t oy = 0; oy < 2 * H; oy++)
            for (int64_t ox = 0; ox < 2 * W; ox++)
                for (int64_t c = 0; c < C; c++)
                    y[((b * 2 * H + oy) * 2 * W + ox) * C + c] = x[((b * H + oy / 2) * W + ox / 2) * C + c];
    return MM_OK;
}

mm_status mm_cpu_ref_activation(mm_backend *be, float *x, int64_t n, mm_activation act) {
    for (int64_t i = 0; i < n; i++) {
        switch (act) {
        case MM_ACT_SILU: x[i] = x[i] / (1.0f + expf(-x[i])); break;
        case MM_ACT_RELU: x[i] = x[i] > 0.0f ? x[i] : 0.0f; break;
        default: return MM_ERROR(MM_ERR_INVALID, "activation: unknown kind %d", (int)act);
        }
    }
    return MM_OK;
}

mm_status mm_cpu_ref_geglu(mm_backend *be, const float *x, float *y, int64_t M, int64_t F) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t f = 0; f < F; f++) {
            float h = x[m * 2 * F + f], g = x[m * 2 * F + F + f];
            y[m * F + f] = h * (0.5f * g * (1.0f + erff(g * 0.7071067811865476f)));
        }
    return MM_OK;
}

mm_status mm_cpu_ref_concat_cols(mm_backend *be, const float *a, const float *b, float *y, int64_t M, int64_t Na,
                                 int64_t Nb) {
    for (int64_t m = 0; m < M; m++) {
        for (int64_t i = 0; i < Na; i++) y[m * (Na + Nb) + i] = a[m * Na + i];
        for (int64_t i = 0; i < Nb; i++) y[m * (Na + Nb) + Na + i] = b[m * Nb + i];
    }
    return MM_OK;
}
