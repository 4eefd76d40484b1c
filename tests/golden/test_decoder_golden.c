/* The tiny diffusion decoder (assets/tiny/decoder) against diffusers 0.35.2
 * (tests/golden/decoder, written by tools/reference/make_decoder_goldens.py):
 * adapter output, UNet eps at three timesteps on both CPU backends (bound 1e-4 max
 * abs), VAE decode (1e-4), every sampler's timestep lists (exact, 5/20/50 steps) and
 * its full guided loop from the reference's noise (latents within 1e-3 max abs, image
 * PSNR >= 40 dB against diffusers' 8-bit image). Prints the measured errors. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "common/safetensors.h"
#include "model/decoder.h"
#include "tests/testutil.h"

static mm_safetensors *gold;
static json_t *meta;

static const float *golden(const char *name, int64_t numel) {
    const mm_st_tensor *t = mm_safetensors_find(gold, name);
    EXPECT(t && t->dtype == MM_DTYPE_F32 && t->numel == numel, "golden tensor %s (%lld values)", name, (long long)numel);
    return t && t->numel == numel ? (const float *)t->data : NULL;
}

static void test_components(mm_backend *be, float bound_unet) {
    mm_decoder *d = NULL;
    mm_status s = mm_decoder_load(mm_asset_path("tiny/decoder"), be, &d);
    EXPECT(s == MM_OK, "decoder load (%s): %s", be->ops->name, mm_error_last());
    if (s != MM_OK) return;
    enum { L = 8, C = 4, X = 32, T = 77, D = 48, n = C * L * L };
    const float *tokens = golden("tokens", 64 * D), *adapter_out = golden("adapter_out", T * X);
    const float *unet_x = golden("unet_x", 2 * n), *vae_z = golden("vae_z", n), *vae_image = golden("vae_image", 3 * 64 * 64);
    if (!tokens || !adapter_out || !unet_x || !vae_z || !vae_image) goto out;

    /* adapter */
    float ctx[T * X], ctx2[2 * T * X];
    EXPECT(mm_adapter_forward(d->adapter, tokens, 64, ctx) == MM_OK, "adapter: %s", mm_error_last());
    float e = mm_max_abs_diff(ctx, adapter_out, T * X);
    printf("%s adapter max|diff| %.3g\n", be->ops->name, e);
    EXPECT(e < 1e-5f, "adapter max abs diff %g", e);

    /* UNet eps on the batch [uncond, cond] */
    memset(ctx2, 0, sizeof ctx2);
    memcpy(ctx2 + T * X, adapter_out, sizeof ctx);
    float x[2 * n], eps[2 * n], eps_nchw[2 * n];
    mm_test_transpose_bc(unet_x, x, 2, C, L * L, 1);
    json_t *ts = json_object_get(meta, "unet_timesteps");
    for (size_t i = 0; i < json_array_size(ts); i++) {
        int t = (int)json_integer_value(json_array_get(ts, i));
        char name[64];
        snprintf(name, sizeof name, "unet_eps.%d", t);
        const float *want = golden(name, 2 * n);
        float tt[2] = {(float)t, (float)t};
        EXPECT(mm_unet_forward(d->unet, x, tt, ctx2, 2, L, L, T, eps) == MM_OK, "unet: %s", mm_error_last());
        mm_test_transpose_bc(eps, eps_nchw, 2, C, L * L, 0);
        e = want ? mm_max_abs_diff(eps_nchw, want, 2 * n) : INFINITY;
        printf("%s unet eps t=%d max|diff| %.3g\n", be->ops->name, t, e);
        EXPECT(e < bound_unet, "unet eps t=%d max abs diff %g", t, e);
    }

    /* VAE decode: raw decoder output in [-1, 1] */
    float z[n], img[3 * 64 * 64], img_nchw[3 * 64 * 64];
    mm_test_transpose_bc(vae_z, z, 1, C, L * L, 1);
    EXPECT(mm_vae_decode(d->vae, z, 1, L, L, img) == MM_OK, "vae: %s", mm_error_last());
    mm_test_transpose_bc(img, img_nchw, 1, 3, 64 * 64, 0);
    e = mm_max_abs_diff(img_nchw, vae_image, 3 * 64 * 64);
    printf("%s vae max|diff| %.3g\n", be->ops->name, e);
    EXPECT(e < 1e-4f, "vae max abs diff %g", e);
out:
    mm_decoder_free(d);
}

static void test_timesteps(void) {
    json_t *full = json_object_get(meta, "timesteps_full"), *few = json_object_get(meta, "timesteps");
    const char *key;
    json_t *list;
    int checked = 0;
    for (int pass = 0; pass < 2; pass++) {
        json_object_foreach(pass ? few : full, key, list) {
            char name[32];
            int steps = 0;
            if (pass) {
                snprintf(name, sizeof name, "%s", key);
                steps = (int)json_integer_value(json_object_get(json_object_get(meta, "steps"), key));
            } else if (sscanf(key, "%31[^.].%d", name, &steps) != 2) {
                continue;
            }
            mm_diffusion_sampler_kind k;
            EXPECT(mm_diffusion_sampler_parse(name, &k) == 0, "sampler name %s", name);
            mm_diffusion_sched *s = NULL;
            EXPECT(mm_diffusion_sched_create(mm_asset_path("tiny/decoder/scheduler"), k, steps, 4, &s) == MM_OK, "%s", mm_error_last());
            if (!s) continue;
            int ok = mm_diffusion_sched_len(s) == (int)json_array_size(list);
            for (int i = 0; ok && i < mm_diffusion_sched_len(s); i++)
                ok = mm_diffusion_sched_timestep(s, i) == json_integer_value(json_array_get(list, (size_t)i));
            EXPECT(ok, "%s with %d steps: timesteps differ from diffusers'", name, steps);
            checked++;
            mm_diffusion_sched_free(s);
        }
    }
    EXPECT(checked == 9, "checked %d timestep lists", checked);
}

static void test_samplers(mm_backend *be) {
    mm_decoder *d = NULL;
    if (mm_decoder_load(mm_asset_path("tiny/decoder"), be, &d) != MM_OK) {
        EXPECT(0, "decoder load: %s", mm_error_last());
        return;
    }
    enum { n = 4 * 8 * 8, npx = 64 * 64 * 3 };
    const float *tokens = golden("tokens", 64 * 48), *noise = golden("noise", n);
    static const char *names[] = {"pndm", "ddim", "dpmpp2m"};
    for (int i = 0; i < 3 && tokens && noise; i++) {
        char key[64];
        mm_decode_params p;
        mm_decode_params_default(&p);
        p.image.sampler = (mm_diffusion_sampler_kind)i;
        p.image.steps = (int32_t)json_integer_value(json_object_get(json_object_get(meta, "steps"), names[i]));
        p.image.guidance = (float)json_number_value(json_object_get(meta, "guidance"));
        p.height = p.width = 64;
        p.init_latents = noise;
        float lat[n];
        uint8_t rgb[npx];
        EXPECT(mm_decoder_generate(d, tokens, 64, &p, rgb, lat) == MM_OK, "%s: %s", names[i], mm_error_last());
        snprintf(key, sizeof key, "latents.%s", names[i]);
        const float *want = golden(key, n);
        float e = want ? mm_max_abs_diff(lat, want, n) : INFINITY;
        snprintf(key, sizeof key, "image.%s", names[i]);
        const float *img = golden(key, npx);
        double se = 0;
        int maxd = 0;
        for (int64_t k = 0; img && k < npx; k++) {
            int ref = (int)nearbyintf(img[k] * 255.0f), dd = abs(ref - (int)rgb[k]);
            se += (double)dd * dd;
            maxd = dd > maxd ? dd : maxd;
        }
        double psnr = se == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 / (se / (double)npx));
        printf("%s %s %d steps: latents max|diff| %.3g, image PSNR %.1f dB, max 8-bit diff %d\n", be->ops->name,
               names[i], p.image.steps, e, psnr, maxd);
        EXPECT(e < 1e-3f, "%s latents max abs diff %g", names[i], e);
        EXPECT(img && psnr >= 40.0, "%s image PSNR %.2f dB", names[i], psnr);
    }
    /* the seeded generator: same seed, same image; another seed, another one */
    mm_decode_params p;
    mm_decode_params_default(&p);
    p.image.steps = 2, p.height = p.width = 64, p.image.seed = 42;
    float a[n], b[n], c[n];
    EXPECT(mm_decoder_generate(d, tokens, 64, &p, NULL, a) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_decoder_generate(d, tokens, 64, &p, NULL, b) == MM_OK, "%s", mm_error_last());
    p.image.seed = 43;
    EXPECT(mm_decoder_generate(d, tokens, 64, &p, NULL, c) == MM_OK, "%s", mm_error_last());
    EXPECT(memcmp(a, b, sizeof a) == 0 && memcmp(a, c, sizeof a) != 0, "seeded noise is not reproducible");
    float z[100000];
    mm_noise_normal(7, 100000, z);
    double m = 0, v = 0;
    for (int k = 0; k < 100000; k++) m += z[k], v += (double)z[k] * z[k];
    m /= 100000, v = v / 100000 - m * m;
    EXPECT(fabs(m) < 0.02 && fabs(v - 1.0) < 0.02, "noise mean %g var %g", m, v);
    mm_decoder_free(d);
}

int main(void) {
    json_error_t err;
    meta = json_load_file(mm_golden_path("decoder/golden.json"), 0, &err);
    if (!meta || mm_safetensors_open(mm_golden_path("decoder/golden.safetensors"), &gold) != MM_OK) {
        fprintf(stderr, "golden files: %s %s\n", err.text, mm_error_last());
        return 1;
    }
    mm_backend *ref = NULL, *fast = NULL;
    if (mm_backend_cpu_ref_init(&ref) != MM_OK || mm_backend_cpu_init(2, &fast) != MM_OK) {
        fprintf(stderr, "backend init: %s\n", mm_error_last());
        return 1;
    }
    test_components(ref, 1e-4f);
    test_components(fast, 1e-4f);
    test_timesteps();
    test_samplers(fast);
    mm_backend_free(ref), mm_backend_free(fast);
    mm_safetensors_close(gold);
    json_decref(meta);
    return mm_test_finish("test_decoder_golden");
}
