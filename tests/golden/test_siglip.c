/* The tiny SigLIP (assets/tiny/vision) against transformers (tests/golden/vision, from
 * tools/reference/make_tiny_vision.py): SiglipImageProcessor pixels (PIL bicubic,
 * rescale, normalise) for every test image, the last encoder layer's features, and the
 * 64 reduced, L2-normalised visual tokens; on the reference and the fast backend, one
 * image at a time and batched (rows bit-identical); tokens from earlier hidden states
 * (MetaMorph's mm_vision_select_layer). */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "model/siglip.h"
#include "tests/testutil.h"

#define TOL 1e-4f

static const float *golden(mm_safetensors *st, const char *kind, const char *name, int64_t numel) {
    char key[256];
    snprintf(key, sizeof key, "%s.%s", kind, name);
    const mm_st_tensor *t = mm_safetensors_find(st, key);
    EXPECT(t && t->dtype == MM_DTYPE_F32 && t->numel == numel, "%s missing or wrong size", key);
    return t && t->numel == numel ? t->data : NULL;
}

int main(void) {
    mm_backend *bes[2] = {NULL, NULL};
    mm_siglip *models[2] = {NULL, NULL};
    mm_safetensors *st = NULL;
    json_error_t err;
    json_t *g = json_load_file(mm_golden_path("vision/golden.json"), 0, &err);
    if (mm_backend_cpu_ref_init(&bes[0]) != MM_OK || mm_backend_cpu_init(2, &bes[1]) != MM_OK ||
        mm_siglip_load(mm_asset_path("tiny/vision"), bes[0], &models[0]) != MM_OK ||
        mm_siglip_load(mm_asset_path("tiny/vision"), bes[1], &models[1]) != MM_OK ||
        mm_safetensors_open(mm_golden_path("vision/golden.safetensors"), &st) != MM_OK || !g) {
        fprintf(stderr, "setup: %s %s\n", mm_error_last(), g ? "" : err.text);
        return 1;
    }
    const mm_siglip_config *c = &models[0]->cfg;
    EXPECT(c->grid == 9 && c->hidden == 48, "tiny SigLIP is 9x9 x 48 (got %d x %d)", c->grid, c->hidden);
    int64_t S = c->image_size, N = (int64_t)c->grid * c->grid, D = c->hidden, T = 64;
    json_t *imgs = json_object_get(g, "images");
    size_t n_img = json_array_size(imgs);
    float *pix_all = malloc(n_img * 3 * S * S * sizeof(float)), *tok_one = malloc(n_img * T * D * sizeof(float));
    float max_pix = 0, max_feat[2] = {0, 0}, max_tok[2] = {0, 0};
    for (size_t i = 0; i < n_img; i++) {
        json_t *e = json_array_get(imgs, i);
        const char *name = json_string_value(json_object_get(e, "name"));
        char rel[512];
        snprintf(rel, sizeof rel, "vision/%s", json_string_value(json_object_get(e, "file")));
        mm_image img;
        EXPECT(mm_image_load(mm_golden_path(rel), NULL, &img) == MM_OK, "%s: %s", name, mm_error_last());
        float *pix = pix_all + i * 3 * S * S;
        EXPECT(mm_siglip_preprocess(&models[0]->pp, &img, pix) == MM_OK, "%s", mm_error_last());
        mm_image_free(&img);
        const float *gp = golden(st, "pixels", name, 3 * S * S);
        if (gp) {
            float d = mm_max_abs_diff(pix, gp, (size_t)(3 * S * S));
            max_pix = d > max_pix ? d : max_pix;
            EXPECT(d <= 1.0f / 255.0f, "%s: pixels differ by %g", name, d);
        }
        for (int b = 0; b < 2; b++) {
            float *feat = malloc((size_t)(N * D) * sizeof(float)), *tok = malloc((size_t)(T * D) * sizeof(float));
            EXPECT(mm_siglip_encode(models[b], gp ? gp : pix, 1, (int32_t)T, feat, tok) == MM_OK, "%s", mm_error_last());
            const float *gf = golden(st, "features", name, N * D), *gt = golden(st, "tokens", name, T * D);
            float df = gf ? mm_max_abs_diff(feat, gf, (size_t)(N * D)) : INFINITY;
            float dt = gt ? mm_max_abs_diff(tok, gt, (size_t)(T * D)) : INFINITY;
            max_feat[b] = df > max_feat[b] ? df : max_feat[b];
            max_tok[b] = dt > max_tok[b] ? dt : max_tok[b];
            EXPECT(df <= TOL && dt <= TOL, "%s (%s): features %g, tokens %g off", name, bes[b]->ops->name, df, dt);
            if (b == 1) memcpy(tok_one + i * T * D, tok, (size_t)(T * D) * sizeof(float));
            free(feat), free(tok);
        }
    }
    /* batched on the fast backend: each image's tokens bit-identical to its own run
     * (3 images: 243 GEMM rows, inside oneDNN's batch-invariant range) */
    float *tok_b = malloc(3 * T * D * sizeof(float));
    for (size_t i = 0; i + 3 <= n_img; i += 3) {
        EXPECT(mm_siglip_encode(models[1], pix_all + i * 3 * S * S, 3, (int32_t)T, NULL, tok_b) == MM_OK, "%s", mm_error_last());
        EXPECT(!memcmp(tok_b, tok_one + i * T * D, 3 * T * D * sizeof(float)), "batch of images %zu..%zu differs", i, i + 2);
    }
    float dummy;
    EXPECT(mm_siglip_encode(models[1], pix_all, 1, 63, NULL, &dummy) == MM_ERR_INVALID, "63 tokens rejected");
    /* mm_vision_select_layer: tokens from an earlier hidden state (golden.json's
     * select_layers x select_images), on the fast backend */
    json_t *sel_layers = json_object_get(g, "select_layers"), *sel_imgs = json_object_get(g, "select_images");
    int n_sel = 0;
    float max_sel = 0;
    for (size_t li = 0; li < json_array_size(sel_layers); li++) {
        int32_t layer = (int32_t)json_integer_value(json_array_get(sel_layers, li));
        EXPECT(mm_siglip_select_layer(models[1], layer) == MM_OK, "select layer %d: %s", layer, mm_error_last());
        for (size_t k = 0; k < json_array_size(sel_imgs); k++) {
            const char *name = json_string_value(json_array_get(sel_imgs, k));
            char kind[64];
            snprintf(kind, sizeof kind, "tokens.select%d", layer);
            const float *gp = golden(st, "pixels", name, 3 * S * S), *gt = golden(st, kind, name, T * D);
            float *tok = malloc((size_t)(T * D) * sizeof(float));
            EXPECT(gp && mm_siglip_encode(models[1], gp, 1, (int32_t)T, NULL, tok) == MM_OK, "%s", mm_error_last());
            float d = gp && gt ? mm_max_abs_diff(tok, gt, (size_t)(T * D)) : INFINITY;
            max_sel = d > max_sel ? d : max_sel;
            EXPECT(d <= TOL, "%s, hidden state %d: tokens %g off", name, layer, d);
            free(tok);
            n_sel++;
        }
    }
    EXPECT(n_sel == 4, "%d select-layer goldens checked", n_sel);
    EXPECT(mm_siglip_select_layer(models[1], 3) == MM_ERR_INVALID && mm_siglip_select_layer(models[1], -4) == MM_ERR_INVALID,
           "hidden states outside 0..2 (-3..-1) refused");
    EXPECT(mm_siglip_select_layer(models[1], -1) == MM_OK && models[1]->run_layers == 2, "-1 is the last layer");
    printf("max |pixels - PIL/transformers| %g; features %g (ref) %g (fast); tokens %g (ref) %g (fast); earlier hidden "
           "states' tokens %g\n", max_pix, max_feat[0], max_feat[1], max_tok[0], max_tok[1], max_sel);
    free(pix_all), free(tok_one), free(tok_b);
    mm_siglip_free(models[0]), mm_siglip_free(models[1]);
    mm_backend_free(bes[0]), mm_backend_free(bes[1]);
    mm_safetensors_close(st);
    json_decref(g);
    return mm_test_finish("test_siglip");
}
