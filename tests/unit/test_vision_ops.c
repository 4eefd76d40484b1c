/* The vision encoder ops (patchify, resize_bilinear) of the fast CPU backend against the
 * reference backend: random inputs, odd shapes, NMSE bound, failure on NaN/Inf; batch
 * invariance (an image's rows are bit-identical alone, in a batch, with 1 or 2 threads);
 * and the bilinear taps against torch's F.interpolate(align_corners=False) values. */
#include <math.h>
#include <string.h>

#include "kernels/backend.h"
#include "tests/testutil.h"

static uint64_t rng = 777;

static float *rand_f32(int64_t n) {
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = mm_rng_uniform(&rng) * 2.0f - 1.0f;
    return p;
}


static void test_patchify(mm_backend *ref, mm_backend *fast, mm_backend *fast1) {
    const int64_t shapes[][4] = {{1, 3, 28, 42}, {3, 3, 126, 126}, {2, 1, 10, 15}, {1, 3, 384, 384}};
    const int32_t patch[] = {14, 14, 5, 14};
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++) {
        int64_t B = shapes[t][0], C = shapes[t][1], H = shapes[t][2], W = shapes[t][3];
        int32_t p = patch[t];
        int64_t n = B * C * H * W, no = B * (H / p) * (W / p) * C * p * p;
        float *x = rand_f32(n), *a = malloc((size_t)no * 4), *r = malloc((size_t)no * 4), *one = malloc((size_t)no * 4);
        EXPECT(ref->ops->patchify(ref, x, r, B, C, H, W, p) == MM_OK, "%s", mm_error_last());
        EXPECT(fast->ops->patchify(fast, x, a, B, C, H, W, p) == MM_OK, "%s", mm_error_last());
        EXPECT(mm_nmse(a, r, no) == 0.0, "patchify %lldx%lldx%lldx%lld p%d nmse %g", (long long)B, (long long)C,
               (long long)H, (long long)W, p, mm_nmse(a, r, no));
        /* the last image alone, one thread: the same rows */
        int64_t per = C * H * W, per_o = no / B;
        EXPECT(fast1->ops->patchify(fast1, x + (B - 1) * per, one, 1, C, H, W, p) == MM_OK, "%s", mm_error_last());
        EXPECT(!memcmp(one, a + (B - 1) * per_o, (size_t)per_o * 4), "patchify batch invariance");
        /* a known element: patch (1, 0) of image 0, channel C-1, ky 2, kx 3 */
        int64_t K = C * p * p, gw = W / p;
        EXPECT(r[(1 * gw + 0) * K + ((C - 1) * p + 2) * p + 3] == x[((C - 1) * H + p + 2) * W + 3], "patchify layout");
        free(x), free(a), free(r), free(one);
    }
    float dummy[4];
    EXPECT(ref->ops->patchify(ref, dummy, dummy, 1, 1, 2, 3, 4) == MM_ERR_INVALID, "image smaller than a patch rejected");
}

static void test_resize(mm_backend *ref, mm_backend *fast, mm_backend *fast1) {
    const int64_t shapes[][6] = {{1, 27, 27, 64, 8, 8}, {3, 9, 9, 48, 8, 8}, {2, 5, 7, 3, 11, 4}, {1, 1, 1, 5, 3, 2},
                                 {2, 27, 27, 1152, 8, 8}, {1, 8, 8, 16, 8, 8}};
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++) {
        int64_t B = shapes[t][0], H = shapes[t][1], W = shapes[t][2], C = shapes[t][3], Ho = shapes[t][4], Wo = shapes[t][5];
        int64_t n = B * H * W * C, no = B * Ho * Wo * C;
        float *x = rand_f32(n), *a = malloc((size_t)no * 4), *r = malloc((size_t)no * 4), *one = malloc((size_t)no * 4);
        EXPECT(ref->ops->resize_bilinear(ref, x, r, B, H, W, C, Ho, Wo) == MM_OK, "%s", mm_error_last());
        EXPECT(fast->ops->resize_bilinear(fast, x, a, B, H, W, C, Ho, Wo) == MM_OK, "%s", mm_error_last());
        EXPECT(mm_nmse(a, r, no) < 1e-12, "resize %lldx%lld->%lldx%lld C%lld nmse %g", (long long)H, (long long)W,
               (long long)Ho, (long long)Wo, (long long)C, mm_nmse(a, r, no));
        int64_t per = H * W * C, per_o = Ho * Wo * C;
        EXPECT(fast1->ops->resize_bilinear(fast1, x + (B - 1) * per, one, 1, H, W, C, Ho, Wo) == MM_OK, "%s", mm_error_last());
        EXPECT(!memcmp(one, a + (B - 1) * per_o, (size_t)per_o * 4), "resize batch invariance");
        if (H == Ho && W == Wo) EXPECT(mm_nmse(r, x, n) == 0.0, "same-size resize is the identity");
        free(x), free(a), free(r), free(one);
    }
    /* torch: F.interpolate(arange(9.).view(1,1,1,9), size=(1,8), mode='bilinear',
     * align_corners=False)[0,0,0] */
    float x9[9], y8[8];
    const float want[8] = {0.0625f, 1.1875f, 2.3125f, 3.4375f, 4.5625f, 5.6875f, 6.8125f, 7.9375f};
    for (int i = 0; i < 9; i++) x9[i] = (float)i;
    EXPECT(ref->ops->resize_bilinear(ref, x9, y8, 1, 1, 9, 1, 1, 8) == MM_OK, "%s", mm_error_last());
    for (int i = 0; i < 8; i++) EXPECT(fabsf(y8[i] - want[i]) < 1e-6f, "bilinear tap %d: %g, torch %g", i, y8[i], want[i]);
}

int main(void) {
    mm_backend *ref = NULL, *fast = NULL, *fast1 = NULL;
    if (mm_backend_cpu_ref_init(&ref) != MM_OK || mm_backend_cpu_init(2, &fast) != MM_OK ||
        mm_backend_cpu_init(1, &fast1) != MM_OK) {
        fprintf(stderr, "%s\n", mm_error_last());
        return 1;
    }
    test_patchify(ref, fast, fast1);
    test_resize(ref, fast, fast1);
    mm_backend_free(ref), mm_backend_free(fast), mm_backend_free(fast1);
    return mm_test_finish("test_vision_ops");
}
