/* Whole models on the CUDA backend against the same goldens as the CPU tests (tiny
 * LLaMA checkpoints, SigLIP, the diffusion decoder's adapter, UNet and VAE), with
 * bounds for the GPU's arithmetic stated below, and greedy decoding against the CPU
 * backend. Exits 77 (ctest SKIP_RETURN_CODE) when there is no GPU. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "common/safetensors.h"
#include "kernels/cuda/backend_cuda.h"
#include "model/decoder.h"
#include "model/llama.h"
#include "model/siglip.h"
#include "common/crash.h"
#include "tests/testutil.h"

/* f32 weights: cuBLAS f32 GEMMs, online-softmax attention: summation order only.
 * f16 weights: activations rounded to f16 before each GEMM, so logits move by up to
 * ~f16 epsilon x |logit|. bf16 weights: activations and KV cache in bf16 (as the CPU
 * fast backend): per prompt, at least as close to the exact logits as transformers
 * itself running the checkpoint in bf16 is (logits_native.safetensors, the same
 * bound as test_llama_golden). The decoder: f32 arithmetic, as the CPU tests' bounds;
 * the full sampler loop as test_decoder_golden (latents 1e-3, image PSNR >= 40 dB). */
#define BOUND_F32_LOGITS 2e-4f
#define BOUND_F16_LOGITS 2e-2f
#define BOUND_NATIVE -1.0f /* the bound comes from logits_native */
#define BOUND_VISION 1e-4f
#define BOUND_DECODER 2e-4f
#define BOUND_LATENTS 1e-3f

static mm_backend *gpu, *cpu;

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy ids of a prompt on backend be; gaps[t]: top-1 minus top-2 logit. */
static void greedy(mm_backend *be, const char *dir, const int32_t *prompt, int n, int steps, int32_t *out, float *gaps) {
    mm_llama *m = NULL;
    mm_kv_cache *kv = NULL;
    EXPECT(mm_llama_load(dir, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m) == MM_OK, "%s", mm_error_last());
    if (!m) return;
    EXPECT(mm_kv_cache_init_typed(be, m->cfg.n_layers, 64, MM_KV_BLOCK_SIZE, m->cfg.n_kv_heads, m->cfg.head_dim, mm_llama_kv_dtype(m),
                                  &kv) == MM_OK, "%s", mm_error_last());
    int V = m->cfg.vocab_size;
    float *lg = malloc((size_t)V * 4);
    mm_llama_seq seq = {0}, *sp = &seq;
    const int32_t *t = prompt;
    int32_t cnt = n, next;
    for (int s = 0; s < steps; s++) {
        EXPECT(mm_llama_eval(m, kv, &sp, &t, &cnt, 1, 0, lg) == MM_OK, "%s", mm_error_last());
        next = out[s] = argmax(lg, V);
        float second = -INFINITY;
        for (int i = 0; i < V; i++)
            if (i != next && lg[i] > second) second = lg[i];
        gaps[s] = lg[next] - second;
        t = &next, cnt = 1;
    }
    mm_kv_seq_release(kv, &seq.kv);
    mm_kv_cache_free(kv);
    mm_llama_free(m);
    free(lg);
}

static void test_llama(const char *name, float bound) {
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s%s", mm_golden_path("llama/"), name);
    snprintf(path, sizeof path, "%s/logits.safetensors", dir);
    mm_safetensors *st = NULL;
    mm_llama *m = NULL;
    mm_kv_cache *kv = NULL;
    mm_safetensors *native = NULL;
    EXPECT(mm_safetensors_open(path, &st) == MM_OK, "%s", mm_error_last());
    if (bound == BOUND_NATIVE) {
        snprintf(path, sizeof path, "%s/logits_native.safetensors", dir);
        EXPECT(mm_safetensors_open(path, &native) == MM_OK, "%s", mm_error_last());
    }
    EXPECT(mm_llama_load(dir, gpu, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m) == MM_OK, "%s: %s", name, mm_error_last());
    float worst = bound; /* the largest bound any prompt had, for the greedy check */
    if (!st || !m || (bound == BOUND_NATIVE && !native)) goto out;
    int V = m->cfg.vocab_size;
    EXPECT(mm_kv_cache_init_typed(gpu, m->cfg.n_layers, 256, MM_KV_BLOCK_SIZE, m->cfg.n_kv_heads, m->cfg.head_dim,
                                  mm_llama_kv_dtype(m), &kv) == MM_OK, "%s", mm_error_last());
    /* the golden prompts (golden.json) through the CUDA model, logits.<i> [n, V] */
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr), *prompts = root ? json_object_get(root, "prompts") : NULL;
    EXPECT(prompts != NULL, "%s: %s", path, jerr.text);
    for (size_t i = 0; prompts && kv && i < json_array_size(prompts); i++) {
        json_t *pj = json_array_get(prompts, i);
        int n = (int)json_array_size(pj);
        char key[64];
        snprintf(key, sizeof key, "logits.%zu", i);
        const mm_st_tensor *gt = mm_safetensors_find(st, key);
        if (!gt || gt->numel != (int64_t)n * V) {
            EXPECT(0, "%s: golden %s", name, key);
            continue;
        }
        int32_t *ids = malloc((size_t)n * 4);
        for (int j = 0; j < n; j++) ids[j] = (int32_t)json_integer_value(json_array_get(pj, (size_t)j));
        float *lg = malloc((size_t)n * V * 4);
        mm_llama_seq seq = {0}, *sp = &seq;
        const int32_t *tp = ids;
        EXPECT(mm_llama_eval(m, kv, &sp, &tp, &n, 1, 1, lg) == MM_OK, "%s", mm_error_last());
        float e = mm_max_abs_diff(lg, gt->data, (size_t)n * V), b = bound;
        if (bound == BOUND_NATIVE) {
            const mm_st_tensor *nt = mm_safetensors_find(native, key);
            b = nt && nt->numel == gt->numel ? mm_max_abs_diff(nt->data, gt->data, (size_t)n * V) : 0.0f;
        }
        worst = b > worst ? b : worst;
        printf("%-10s cuda prompt %zu: max abs logit error %.3g (bound %.3g)\n", name, i, e, b);
        EXPECT(e <= b, "%s prompt %zu: %g > %g", name, i, e, b);
        mm_kv_seq_release(kv, &seq.kv);
        free(ids), free(lg);
    }
    json_decref(root);
    /* greedy: CUDA agrees with the CPU backend except at a genuine near-tie */
    int32_t prompt[5] = {1, 15043, 29892, 3186, 29991}, a[24], b[24];
    float ga[24], gb[24];
    for (int j = 0; j < 5; j++) prompt[j] %= V;
    greedy(gpu, dir, prompt, 5, 24, a, ga);
    greedy(cpu, dir, prompt, 5, 24, b, gb);
    int diff = -1;
    for (int s = 0; s < 24 && diff < 0; s++)
        if (a[s] != b[s]) diff = s;
    printf("%-10s greedy cuda vs cpu: %s (step %d, cpu top-2 gap %.3g)\n", name, diff < 0 ? "identical" : "diverge", diff,
           diff < 0 ? 0.0 : gb[diff]);
    EXPECT(diff < 0 || gb[diff] < 2.0f * worst, "%s: greedy differs at step %d where the CPU's top-2 gap %g > 2 x %g",
           name, diff, diff >= 0 ? gb[diff] : 0.0f, worst);
out:
    mm_kv_cache_free(kv);
    mm_llama_free(m);
    mm_safetensors_close(st);
    mm_safetensors_close(native);
}

static void test_siglip(void) {
    mm_siglip *m = NULL, *r = NULL;
    mm_safetensors *st = NULL;
    EXPECT(mm_siglip_load(mm_asset_path("tiny/vision"), gpu, &m) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_siglip_load(mm_asset_path("tiny/vision"), cpu, &r) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_safetensors_open(mm_golden_path("vision/golden.safetensors"), &st) == MM_OK, "%s", mm_error_last());
    if (!m || !r || !st) goto out;
    int64_t S = m->cfg.image_size, N = (int64_t)m->cfg.grid * m->cfg.grid, D = m->cfg.hidden, T = 64;
    /* every pixels.<name> golden through the tower; features.<name> / tokens.<name> */
    for (size_t i = 0; i < mm_safetensors_count(st); i++) {
        const mm_st_tensor *p = mm_safetensors_find(st, mm_safetensors_name(st, i));
        if (!p || strncmp(p->name, "pixels.", 7) || p->numel != 3 * S * S) continue;
        char key[256];
        snprintf(key, sizeof key, "features.%s", p->name + 7);
        const mm_st_tensor *gf = mm_safetensors_find(st, key);
        snprintf(key, sizeof key, "tokens.%s", p->name + 7);
        const mm_st_tensor *gtk = mm_safetensors_find(st, key);
        float *f = malloc((size_t)(N * D) * 4), *t = malloc((size_t)(T * D) * 4);
        EXPECT(mm_siglip_encode(m, p->data, 1, (int32_t)T, f, t) == MM_OK, "%s", mm_error_last());
        float ef = gf ? mm_max_abs_diff(f, gf->data, (size_t)(N * D)) : INFINITY;
        float et = gtk ? mm_max_abs_diff(t, gtk->data, (size_t)(T * D)) : INFINITY;
        printf("siglip %-12s cuda: features %.3g, tokens %.3g (bound %.1g)\n", p->name + 7, ef, et, BOUND_VISION);
        EXPECT(ef <= BOUND_VISION && et <= BOUND_VISION, "siglip %s: %g %g", p->name, ef, et);
        free(f), free(t);
    }
out:
    mm_safetensors_close(st);
    mm_siglip_free(m), mm_siglip_free(r);
}

/* host [n] -> a new device buffer */
static float *to_gpu(const float *h, int64_t n) {
    float *d = gpu->ops->alloc(gpu, (size_t)n * 4);
    EXPECT(d && gpu->ops->upload(gpu, d, h, (size_t)n * 4) == MM_OK, "upload: %s", mm_error_last());
    return d;
}

/* device [n] -> host y; frees the device buffer */
static void from_gpu(float *d, float *y, int64_t n) {
    EXPECT(gpu->ops->download(gpu, y, d, (size_t)n * 4) == MM_OK, "download: %s", mm_error_last());
    gpu->ops->dealloc(gpu, d);
}

static const float *golden_f32(mm_safetensors *g, const char *name, int64_t numel) {
    const mm_st_tensor *t = mm_safetensors_find(g, name);
    EXPECT(t && t->dtype == MM_DTYPE_F32 && t->numel == numel, "decoder golden %s (%lld values)", name, (long long)numel);
    return t && t->dtype == MM_DTYPE_F32 && t->numel == numel ? (const float *)t->data : NULL;
}

/* The adapter, the UNet at the golden timesteps, the VAE (device buffers), then the
 * whole guided sampler loop from the reference's noise (host API). */
static void test_decoder(void) {
    mm_decoder *d = NULL;
    mm_safetensors *g = NULL;
    json_error_t jerr;
    json_t *meta = json_load_file(mm_golden_path("decoder/golden.json"), 0, &jerr);
    EXPECT(meta != NULL, "decoder/golden.json: %s", jerr.text);
    EXPECT(mm_decoder_load(mm_asset_path("tiny/decoder"), gpu, &d) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_safetensors_open(mm_golden_path("decoder/golden.safetensors"), &g) == MM_OK, "%s", mm_error_last());
    if (!d || !g || !meta) goto out;
    enum { L = 8, C = 4, X = 32, T = 77, D = 48, n = C * L * L, npx = 64 * 64 * 3 };
    const float *tok = golden_f32(g, "tokens", 64 * D), *ad = golden_f32(g, "adapter_out", T * X);
    const float *ux = golden_f32(g, "unet_x", 2 * n), *vz = golden_f32(g, "vae_z", n), *vi = golden_f32(g, "vae_image", 3 * 64 * 64);
    if (!tok || !ad || !ux || !vz || !vi) goto out;
    /* adapter */
    float ctx[T * X], ctx2[2 * T * X];
    float *tok_d = to_gpu(tok, 64 * D), *ctx_d = gpu->ops->alloc(gpu, sizeof ctx);
    EXPECT(mm_adapter_forward(d->adapter, tok_d, 64, ctx_d) == MM_OK, "%s", mm_error_last());
    from_gpu(ctx_d, ctx, T * X);
    gpu->ops->dealloc(gpu, tok_d);
    float e = mm_max_abs_diff(ctx, ad, T * X);
    printf("decoder adapter cuda max|diff| %.3g (bound %.1g)\n", e, BOUND_DECODER);
    EXPECT(e < BOUND_DECODER, "adapter %g", e);
    /* UNet eps on the batch [uncond, cond] at each golden timestep */
    memset(ctx2, 0, sizeof ctx2);
    memcpy(ctx2 + T * X, ad, sizeof ctx);
    float x[2 * n], eps[2 * n], eps_nchw[2 * n];
    mm_test_transpose_bc(ux, x, 2, C, L * L, 1);
    float *x_d = to_gpu(x, 2 * n), *c2_d = to_gpu(ctx2, 2 * T * X);
    json_t *ts = json_object_get(meta, "unet_timesteps");
    EXPECT(json_array_size(ts) > 0, "golden.json: unet_timesteps");
    for (size_t i = 0; i < json_array_size(ts); i++) {
        int t = (int)json_integer_value(json_array_get(ts, i));
        char name[64];
        snprintf(name, sizeof name, "unet_eps.%d", t);
        const float *want = golden_f32(g, name, 2 * n);
        float tt[2] = {(float)t, (float)t}, *eps_d = gpu->ops->alloc(gpu, sizeof eps);
        EXPECT(mm_unet_forward(d->unet, x_d, tt, c2_d, 2, L, L, T, eps_d) == MM_OK, "unet: %s", mm_error_last());
        from_gpu(eps_d, eps, 2 * n);
        mm_test_transpose_bc(eps, eps_nchw, 2, C, L * L, 0);
        e = want ? mm_max_abs_diff(eps_nchw, want, 2 * n) : INFINITY;
        printf("decoder unet eps t=%d cuda max|diff| %.3g (bound %.1g)\n", t, e, BOUND_DECODER);
        EXPECT(e < BOUND_DECODER, "unet eps t=%d: %g", t, e);
    }
    gpu->ops->dealloc(gpu, x_d), gpu->ops->dealloc(gpu, c2_d);
    /* VAE: golden latents and image are NCHW; ours channels-last */
    float z[n], img[npx], ref[npx];
    mm_test_transpose_bc(vz, z, 1, C, L * L, 1);
    mm_test_transpose_bc(vi, ref, 1, 3, 64 * 64, 1);
    float *z_d = to_gpu(z, n), *img_d = gpu->ops->alloc(gpu, sizeof img);
    EXPECT(mm_vae_decode(d->vae, z_d, 1, L, L, img_d) == MM_OK, "%s", mm_error_last());
    from_gpu(img_d, img, npx);
    gpu->ops->dealloc(gpu, z_d);
    e = mm_max_abs_diff(img, ref, npx);
    printf("decoder vae cuda max|diff| %.3g (bound %.1g)\n", e, BOUND_DECODER);
    EXPECT(e < BOUND_DECODER, "vae %g", e);
    /* the guided PNDM loop (diffusers' default sampler) from the golden noise */
    const float *noise = golden_f32(g, "noise", n), *lat_want = golden_f32(g, "latents.pndm", n);
    const float *img_want = golden_f32(g, "image.pndm", npx);
    if (!noise || !lat_want || !img_want) goto out;
    mm_decode_params p;
    mm_decode_params_default(&p);
    p.image.sampler = MM_DIFFUSION_SAMPLER_PNDM;
    p.image.steps = (int32_t)json_integer_value(json_object_get(json_object_get(meta, "steps"), "pndm"));
    p.image.guidance = (float)json_number_value(json_object_get(meta, "guidance"));
    p.height = p.width = 64;
    p.init_latents = noise;
    float lat[n];
    uint8_t rgb[npx];
    EXPECT(mm_decoder_generate(d, tok, 64, &p, rgb, lat) == MM_OK, "pndm: %s", mm_error_last());
    e = mm_max_abs_diff(lat, lat_want, n);
    double se = 0;
    for (int k = 0; k < npx; k++) {
        int dd = (int)nearbyintf(img_want[k] * 255.0f) - (int)rgb[k];
        se += (double)dd * dd;
    }
    double psnr = se == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 / (se / npx));
    printf("decoder pndm %d steps cuda: latents max|diff| %.3g (bound %.0e), image PSNR %.1f dB (>= 40)\n", p.image.steps, e,
           BOUND_LATENTS, psnr);
    EXPECT(e < BOUND_LATENTS && psnr >= 40.0, "pndm: latents %g, PSNR %.2f dB", e, psnr);
out:
    json_decref(meta);
    mm_safetensors_close(g);
    mm_decoder_free(d);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* every line survives a crash */
    mm_crash_trace_install();
    if (mm_cuda_device_count() == 0) {
        printf("test_cuda_models: no GPU (or no CUDA build): skipped\n");
        return 77;
    }
    if (mm_backend_init("cuda", 1, &gpu) != MM_OK || mm_backend_init("cpu", 2, &cpu) != MM_OK) {
        fprintf(stderr, "backend init: %s\n", mm_error_last());
        return 1;
    }
    test_llama("gqa_llama3", BOUND_F32_LOGITS);
    test_llama("mha", BOUND_F32_LOGITS);
    test_llama("tied_f16", BOUND_F16_LOGITS);
    test_llama("bf16", BOUND_NATIVE);
    test_siglip();
    test_decoder();
    mm_backend_free(gpu), mm_backend_free(cpu);
    return mm_test_finish("test_cuda_models");
}
