/* Image decoding: every test image (PNG colour types and bit depths, baseline and
 * progressive JPEG) decodes to exactly PIL's convert('RGB') bytes
 * (tests/golden/vision/golden.safetensors "rgb.*", from make_tiny_vision.py), and every
 * corrupt file, limit breach and garbage input gives an error status with a message.
 * Also built with AddressSanitizer (test_image_asan). */
#include <jansson.h>
#include <string.h>

#include "common/image.h"
#include "common/safetensors.h"
#include "tests/testutil.h"

static void test_goldens(void) {
    json_error_t err;
    json_t *g = json_load_file(mm_golden_path("vision/golden.json"), 0, &err);
    mm_safetensors *st = NULL;
    EXPECT(g != NULL, "golden.json: %s", err.text);
    EXPECT(mm_safetensors_open(mm_golden_path("vision/golden.safetensors"), &st) == MM_OK, "%s", mm_error_last());
    if (!g || !st) return;
    json_t *imgs = json_object_get(g, "images");
    for (size_t i = 0; i < json_array_size(imgs); i++) {
        json_t *e = json_array_get(imgs, i);
        const char *name = json_string_value(json_object_get(e, "name"));
        char rel[512], key[256];
        snprintf(rel, sizeof rel, "vision/%s", json_string_value(json_object_get(e, "file")));
        snprintf(key, sizeof key, "rgb.%s", name);
        mm_image img;
        mm_status s = mm_image_load(mm_golden_path(rel), NULL, &img);
        EXPECT(s == MM_OK, "%s: %s", name, mm_error_last());
        const mm_st_tensor *t = mm_safetensors_find(st, key);
        EXPECT(t && t->ndim == 3, "%s missing", key);
        if (s != MM_OK || !t) continue;
        EXPECT(img.width == t->shape[1] && img.height == t->shape[0], "%s: %dx%d", name, img.width, img.height);
        size_t n = (size_t)img.width * img.height * 3, bad = 0;
        for (size_t k = 0; k < n && n == (size_t)t->numel; k++) bad += img.rgb[k] != ((const uint8_t *)t->data)[k];
        EXPECT(n == (size_t)t->numel && bad == 0, "%s (PIL mode %s): %zu of %zu bytes differ from PIL", name,
               json_string_value(json_object_get(e, "pil_mode")), bad, n);
        mm_image_free(&img);
    }
    mm_safetensors_close(st);
    json_decref(g);
}

static void expect_error(const char *file, mm_status want, const mm_image_limits *lim) {
    char rel[256];
    snprintf(rel, sizeof rel, "vision/corrupt/%s", file);
    mm_image img = {0};
    mm_status s = mm_image_load(mm_golden_path(rel), lim, &img);
    EXPECT(s != MM_OK && (want == MM_OK || s == want), "%s: status %s (%s)", file, mm_status_str(s), mm_error_last());
    EXPECT(strlen(mm_error_last()) > 0 && img.rgb == NULL, "%s: no message or pixels left", file);
    if (s != MM_OK) printf("  %-18s -> %s: %s\n", file, mm_status_str(s), mm_error_last());
    mm_image_free(&img);
}

static void test_corrupt(void) {
    expect_error("truncated.png", MM_ERR_FORMAT, NULL);
    expect_error("bad_crc.png", MM_ERR_FORMAT, NULL);
    expect_error("zero_width.png", MM_ERR_FORMAT, NULL);
    expect_error("tall_1x100000.png", MM_ERR_INVALID, NULL);
    expect_error("truncated.jpg", MM_ERR_FORMAT, NULL);
    expect_error("garbage_scan.jpg", MM_ERR_FORMAT, NULL);
    expect_error("empty.png", MM_ERR_FORMAT, NULL);
    expect_error("not_an_image.txt", MM_ERR_FORMAT, NULL);
    /* limits are configurable: a 37x23 image over a 32-pixel side, a 2506-byte one over 1000 bytes */
    mm_image_limits small = mm_image_limits_default();
    small.max_width = 32;
    mm_image img;
    EXPECT(mm_image_load(mm_golden_path("vision/images/rgb_37x23.png"), &small, &img) == MM_ERR_INVALID, "width limit");
    EXPECT(mm_image_load(mm_golden_path("vision/images/baseline_45x33.jpg"), &small, &img) == MM_ERR_INVALID, "JPEG width limit");
    small = mm_image_limits_default();
    small.max_bytes = 1000;
    EXPECT(mm_image_load(mm_golden_path("vision/images/rgb_37x23.png"), &small, &img) == MM_ERR_INVALID, "byte limit");
    /* failures leave an image that can be freed (regression: a directory passed to
     * mm-run --image freed an uninitialised pointer) */
    memset(&img, 0xAB, sizeof img);
    EXPECT(mm_image_load("/nonexistent.png", NULL, &img) == MM_ERR_IO && img.rgb == NULL, "missing file");
    mm_image_free(&img);
    memset(&img, 0xAB, sizeof img);
    EXPECT(mm_image_load(mm_golden_path("vision"), NULL, &img) == MM_ERR_IO && img.rgb == NULL, "a directory");
    mm_image_free(&img);
    /* every prefix of a valid PNG and JPEG fails cleanly (no crash, no leak, no hang) */
    const char *files[] = {"vision/images/rgb_37x23.png", "vision/images/progressive_161x97.jpg"};
    for (int f = 0; f < 2; f++) {
        FILE *fp = fopen(mm_golden_path(files[f]), "rb");
        uint8_t buf[1 << 15];
        size_t n = fp ? fread(buf, 1, sizeof buf, fp) : 0;
        if (fp) fclose(fp);
        int ok = 1;
        for (size_t cut = 0; cut < n; cut += 1 + cut / 16) {
            mm_status s = mm_image_decode(buf, cut, NULL, &img);
            if (s == MM_OK) ok = 0, mm_image_free(&img);
        }
        EXPECT(n > 0 && ok, "%s: a truncated prefix decoded", files[f]);
    }
}

int main(void) {
    test_goldens();
    test_corrupt();
    return mm_test_finish("test_image");
}
