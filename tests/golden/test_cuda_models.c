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
#include "tests/testutil.h"

/* f32 weights: cuBLAS f32 GEMMs, online-softmax attention: summation order only.
 * f16/bf16 weights: activations rounded to the weight type before each GEMM (as the
 * CPU fast backend does for bf16), so logits move by up to ~bf16 epsilon x |logit|. */
#define BOUND_F32_LOGITS 2e-4f
#define BOUND_F16_LOGITS 2e-2f
#define BOUND_BF16_LOGITS 1e-1f
#define BOUND_VISION 1e-4f
#define BOUND_DECODER 2e-4f

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
    EXPECT(mm_kv_cache_init_typed(be, m->cfg.n_layers, 64, 16, m->cfg.n_kv_heads, m->cfg.head_dim, mm_llama_kv_dtype(m),
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
    EXPECT(mm_safetensors_open(path, &st) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_llama_load(dir, gpu, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m) == MM_OK, "%s: %s", name, mm_error_last());
    if (!st || !m) goto out;
    int V = m->cfg.vocab_size;
    EXPECT(mm_kv_cache_init_typed(gpu, m->cfg.n_layers, 256, 16, m->cfg.n_kv_heads, m->cfg.head_dim,
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
        float e = mm_max_abs_diff(lg, gt->data, (size_t)n * V);
        printf("%-10s cuda prompt %zu: max abs logit error %.3g (bound %.3g)\n", name, i, e, bound);
        EXPECT(e <= bound, "%s prompt %zu: %g > %g", name, i, e, bound);
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
    EXPECT(diff < 0 || gb[diff] < 2.0f * bound, "%s: greedy differs at step %d where the CPU's top-2 gap %g > 2 x %g",
           name, diff, diff >= 0 ? gb[diff] : 0.0f, bound);
out:
    mm_kv_cache_free(kv);
    mm_llama_free(m);
    mm_safetensors_close(st);
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

static void test_decoder(void) {
    mm_decoder *d = NULL;
    mm_safetensors *g = NULL;
    EXPECT(mm_decoder_load(mm_asset_path("tiny/decoder"), gpu, &d) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_safetensors_open(mm_golden_path("decoder/golden.safetensors"), &g) == MM_OK, "%s", mm_error_last());
    if (!d || !g) goto out;
    enum { L = 8, C = 4, X = 32, T = 77, D = 48, n = C * L * L };
    const mm_st_tensor *tok = mm_safetensors_find(g, "tokens"), *ad = mm_safetensors_find(g, "adapter_out");
    const mm_st_tensor *vz = mm_safetensors_find(g, "vae_z"), *vi = mm_safetensors_find(g, "vae_image");
    if (!tok || !ad || !vz || !vi) {
        EXPECT(0, "decoder goldens missing");
        goto out;
    }
    float ctx[T * X];
    EXPECT(mm_adapter_forward(d->adapter, tok->data, 64, ctx) == MM_OK, "%s", mm_error_last());
    float e = mm_max_abs_diff(ctx, ad->data, T * X);
    printf("decoder adapter cuda max|diff| %.3g (bound %.1g)\n", e, BOUND_DECODER);
    EXPECT(e < BOUND_DECODER, "adapter %g", e);
    /* VAE: golden latents are NCHW; ours channels-last */
    float z[n], img[3 * 64 * 64], ref[3 * 64 * 64];
    const float *zs = vz->data, *is = vi->data;
    for (int c = 0; c < C; c++)
        for (int p = 0; p < L * L; p++) z[p * C + c] = zs[c * L * L + p];
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < 64 * 64; p++) ref[p * 3 + c] = is[c * 64 * 64 + p];
    EXPECT(mm_vae_decode(d->vae, z, 1, L, L, img) == MM_OK, "%s", mm_error_last());
    e = mm_max_abs_diff(img, ref, 3 * 64 * 64);
    printf("decoder vae cuda max|diff| %.3g (bound %.1g)\n", e, BOUND_DECODER);
    EXPECT(e < BOUND_DECODER, "vae %g", e);
out:
    mm_safetensors_close(g);
    mm_decoder_free(d);
}

int main(void) {
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
    test_llama("bf16", BOUND_BF16_LOGITS);
    test_siglip();
    test_decoder();
    mm_backend_free(gpu), mm_backend_free(cpu);
    return mm_test_finish("test_cuda_models");
}
