/* PIL's Image.resize for 8-bit RGB, restated from the algorithm of Pillow's
 * libImaging/Resample.c (facts, not code): so that our preprocessing gives the very
 * bytes SiglipImageProcessor gets from PIL, not merely close ones.
 *
 *   scale = in / out, filterscale = max(scale, 1), support = filter_support * filterscale
 *   output pixel i: center = (i + 0.5) * scale,
 *     taps x in [int(center - support + 0.5) clamped to 0, int(center + support + 0.5)
 *     clamped to in), weight w(x) = filter((x - center + 0.5) / filterscale), normalised
 *     to sum 1 (in double), then fixed point: (int)(w * 2^22 +- 0.5) (round half away).
 *   pass: acc = 2^21 + sum(pixel * weight) in int32, out = clip(acc >> 22, 0, 255).
 *   Horizontal pass first (only the rows the vertical pass reads), then vertical; a
 *   pass is skipped when that dimension keeps its size. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

#define PRECISION_BITS (32 - 8 - 2)

static double filter_bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double filter_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

typedef struct {
    int ksize;
    int32_t *bounds; /* [out, 2]: first tap, tap count */
    int32_t *kk;     /* [out, ksize] fixed-point weights */
} coeffs;

static mm_status coeffs_make(int32_t in_size, int32_t out_size, double (*filter)(double), double support0,
                             coeffs *c) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = support0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = malloc(sizeof *w * (size_t)ksize);
    c->ksize = ksize;
    c->bounds = malloc(sizeof *c->bounds * 2 * (size_t)out_size);
    c->kk = malloc(sizeof *c->kk * (size_t)ksize * (size_t)out_size);
    if (!w || !c->bounds || !c->kk) {
        free(w), free(c->bounds), free(c->kk);
        return MM_ERROR(MM_ERR_NOMEM, "resize coefficients (%d taps x %d)", ksize, out_size);
    }
    for (int32_t xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int32_t xmin = (int32_t)(center - support + 0.5), xmax = (int32_t)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int32_t x = 0; x < xmax; x++) {
            w[x] = filter((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = c->kk + (size_t)xx * ksize;
        for (int32_t x = 0; x < ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        c->bounds[2 * xx] = xmin, c->bounds[2 * xx + 1] = xmax;
    }
    free(w);
    return MM_OK;
}

static inline uint8_t clip8(int32_t v) {
    if (v >= (1 << PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PRECISION_BITS);
}

/* out[rows, out_w, 3] from in[rows_in.., in_w, 3] starting at row y0 */
static void pass_horizontal(const uint8_t *in, int32_t in_w, int32_t y0, int32_t rows, const coeffs *c,
                            int32_t out_w, uint8_t *out) {
    for (int32_t y = 0; y < rows; y++) {
        const uint8_t *src = in + ((size_t)(y + y0) * in_w) * 3;
        for (int32_t xx = 0; xx < out_w; xx++) {
            int32_t xmin = c->bounds[2 * xx], n = c->bounds[2 * xx + 1];
            const int32_t *k = c->kk + (size_t)xx * c->ksize;
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int32_t x = 0; x < n; x++) {
                const uint8_t *p = src + (size_t)(x + xmin) * 3;
                s0 += p[0] * k[x], s1 += p[1] * k[x], s2 += p[2] * k[x];
            }
            uint8_t *o = out + ((size_t)y * out_w + xx) * 3;
            o[0] = clip8(s0), o[1] = clip8(s1), o[2] = clip8(s2);
        }
    }
}

/* out[out_h, w, 3]; bounds relative to the first row of in */
static void pass_vertical(const uint8_t *in, int32_t w, const coeffs *c, int32_t y_shift, int32_t out_h,
                          uint8_t *out) {
    for (int32_t yy = 0; yy < out_h; yy++) {
        int32_t ymin = c->bounds[2 * yy] - y_shift, n = c->bounds[2 * yy + 1];
        const int32_t *k = c->kk + (size_t)yy * c->ksize;
        for (int32_t xx = 0; xx < w; xx++) {
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int32_t y = 0; y < n; y++) {
                const uint8_t *p = in + ((size_t)(y + ymin) * w + xx) * 3;
                s0 += p[0] * k[y], s1 += p[1] * k[y], s2 += p[2] * k[y];
            }
            uint8_t *o = out + ((size_t)yy * w + xx) * 3;
            o[0] = clip8(s0), o[1] = clip8(s1), o[2] = clip8(s2);
        }
    }
}

mm_status mm_image_resize(const mm_image *in, int32_t width, int32_t height, int resample, mm_image *out) {
    double (*filter)(double);
    double support;
    if (resample == 3) filter = filter_bicubic, support = 2.0;
    else if (resample == 2) filter = filter_bilinear, support = 1.0;
    else return MM_ERROR(MM_ERR_UNSUPPORTED, "resize: resample %d (only 2 bilinear, 3 bicubic)", resample);
    if (!in || !in->rgb || in->width <= 0 || in->height <= 0 || width <= 0 || height <= 0)
        return MM_ERROR(MM_ERR_INVALID, "resize: empty image or size %dx%d", width, height);
    memset(out, 0, sizeof *out);
    coeffs ch = {0}, cv = {0};
    uint8_t *tmp = NULL, *dst = malloc((size_t)width * height * 3);
    mm_status rc = CHECK_ALLOC(dst);
    int need_h = width != in->width, need_v = height != in->height;
    if (rc == MM_OK) rc = coeffs_make(in->width, width, filter, support, &ch);
    if (rc == MM_OK) rc = coeffs_make(in->height, height, filter, support, &cv);
    if (rc != MM_OK) goto done;
    const uint8_t *src = in->rgb;
    int32_t y_shift = 0;
    if (need_h) {
        /* only rows [first, last) are read by the vertical pass */
        int32_t first = need_v ? cv.bounds[0] : 0;
        int32_t last = need_v ? cv.bounds[2 * height - 2] + cv.bounds[2 * height - 1] : in->height;
        uint8_t *h_out = need_v ? (tmp = malloc((size_t)width * (size_t)(last - first) * 3)) : dst;
        if (!h_out) {
            rc = MM_ERROR(MM_ERR_NOMEM, "resize: intermediate %dx%d", width, last - first);
            goto done;
        }
        pass_horizontal(in->rgb, in->width, first, last - first, &ch, width, h_out);
        src = h_out, y_shift = first;
    }
    if (need_v) pass_vertical(src, width, &cv, y_shift, height, dst);
    else if (!need_h) memcpy(dst, in->rgb, (size_t)width * height * 3);
    out->width = width, out->height = height, out->rgb = dst;
    dst = NULL;
done:
    free(ch.bounds), free(ch.kk), free(cv.bounds), free(cv.kk);
    free(tmp), free(dst);
    return rc;
}
