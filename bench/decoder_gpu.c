/* bench/decoder_gpu: the diffusion decoder on the CUDA backend at Stable Diffusion 1.5
 * shapes, one JSON object: seconds per UNet call (64x64 latents, batch 2 = classifier-
 * free guidance, 77 x 768 context; median of --runs after a warm-up, the stream
 * synchronised around each), and one VAE decode to 512x512. Baseline from the same
 * run: diffusers' UNet2DConditionModel at the same shapes on the same GPU, in f32 (our
 * arithmetic: f16 weights computed in f32, no TF32) and in f16 (what pipelines run),
 * through bench/decoder_torch.py when torch and diffusers are importable. Weights are
 * random (bench/sd15_weights.c). Prints {"skipped": ...} without a GPU. */
#include <stdio.h>
#include <stdlib.h>

#include "bench/bench_util.h"
#include "bench/sd15_weights.h"
#include "common/crash.h"
#include "kernels/cuda/backend_cuda.h"
#include "model/unet.h"
#include "model/vae.h"

#define MAX_RUNS 32

static int fail(const char *what) {
    fprintf(stderr, "decoder_gpu: %s: %s\n", what, mm_error_last());
    return 1;
}

int main(int argc, char **argv) {
    mm_bench_decoder_args args = {.runs = 5};
    if (mm_bench_decoder_args_parse(argc, argv, "decoder_gpu", &args)) return 2;
    const char *workdir = args.workdir;
    int runs = args.runs, with_torch = args.with_torch;
    if (runs < 1 || runs > MAX_RUNS) runs = runs < 1 ? 1 : MAX_RUNS;
    mm_crash_trace_install();
    if (mm_cuda_device_count() == 0) {
        printf("{\"benchmark\": \"decoder_gpu\", \"skipped\": \"no GPU\"}\n");
        return 0;
    }
    char tmpdir[] = "/tmp/mm_bench_decoder.XXXXXX", unet_dir[4096], vae_dir[4096];
    if (!workdir && !(workdir = mkdtemp(tmpdir))) return 1;
    if (mm_bench_sd15_write(workdir) != 0) return fail("writing weights");
    snprintf(unet_dir, sizeof unet_dir, "%s/unet", workdir);
    snprintf(vae_dir, sizeof vae_dir, "%s/vae", workdir);

    const int64_t B = 2, h = 64, w = 64, T = 77, X = 768, nx = B * h * w * 4, nc = B * T * X;
    float *x = malloc((size_t)nx * 4), *ctx = calloc((size_t)nc, 4), *z = malloc((size_t)(h * w * 4) * 4);
    if (!x || !ctx || !z) return 1;
    uint64_t r = mm_rng_seed(7);
    for (int64_t i = 0; i < nx; i++) x[i] = mm_rng_uniform(&r) * 2 - 1;
    for (int64_t i = T * X; i < nc; i++) ctx[i] = mm_rng_uniform(&r) * 2 - 1;
    for (int64_t i = 0; i < h * w * 4; i++) z[i] = (mm_rng_uniform(&r) * 2 - 1) * 0.18215f;
    float t[2] = {981, 981};

    mm_backend *be;
    mm_unet *u;
    mm_vae *v;
    if (mm_backend_init("cuda", 1, &be) != MM_OK) return fail("backend");
    double t0 = mm_now_s();
    if (mm_unet_load(unet_dir, be, &u) != MM_OK) return fail("UNet load");
    double load_s = mm_now_s() - t0;
    /* device buffers: x [B, h, w, 4], ctx [B, T, X], eps like x, z [1, h, w, 4], image [1, 8h, 8w, 3] */
    float *x_d = be->ops->alloc(be, (size_t)nx * 4), *ctx_d = be->ops->alloc(be, (size_t)nc * 4);
    float *eps_d = be->ops->alloc(be, (size_t)nx * 4), *z_d = be->ops->alloc(be, (size_t)(h * w * 4) * 4);
    float *img_d = be->ops->alloc(be, (size_t)(8 * h * 8 * w * 3) * 4);
    if (!x_d || !ctx_d || !eps_d || !z_d || !img_d) return fail("buffers");
    if (be->ops->upload(be, x_d, x, (size_t)nx * 4) != MM_OK || be->ops->upload(be, ctx_d, ctx, (size_t)nc * 4) != MM_OK ||
        be->ops->upload(be, z_d, z, (size_t)(h * w * 4) * 4) != MM_OK)
        return fail("upload");
    t0 = mm_now_s();
    if (mm_unet_forward(u, x_d, t, ctx_d, B, h, w, T, eps_d) != MM_OK || mm_backend_cuda_sync(be) != MM_OK)
        return fail("UNet");
    double first_s = mm_now_s() - t0, step[MAX_RUNS];
    for (int k = 0; k < runs; k++) {
        t0 = mm_now_s();
        if (mm_unet_forward(u, x_d, t, ctx_d, B, h, w, T, eps_d) != MM_OK || mm_backend_cuda_sync(be) != MM_OK)
            return fail("UNet");
        step[k] = mm_now_s() - t0;
    }
    double unet_s = mm_bench_median(step, runs);
    mm_unet_free(u);
    if (mm_vae_load(vae_dir, be, &v) != MM_OK) return fail("VAE load");
    if (mm_vae_decode(v, z_d, 1, h, w, img_d) != MM_OK || mm_backend_cuda_sync(be) != MM_OK) return fail("VAE");
    t0 = mm_now_s();
    if (mm_vae_decode(v, z_d, 1, h, w, img_d) != MM_OK || mm_backend_cuda_sync(be) != MM_OK) return fail("VAE");
    double vae_s = mm_now_s() - t0;
    mm_vae_free(v);
    be->ops->dealloc(be, x_d), be->ops->dealloc(be, ctx_d), be->ops->dealloc(be, eps_d);
    be->ops->dealloc(be, z_d), be->ops->dealloc(be, img_d);
    mm_backend_free(be);

    double d32 = with_torch ? mm_bench_diffusers_step("--device cuda --dtype float32 --runs 5") : -1;
    double d16 = with_torch ? mm_bench_diffusers_step("--device cuda --dtype float16 --runs 5") : -1;
    printf("{\"benchmark\": \"decoder_gpu\", \"unet\": \"SD 1.5 shapes, f16 weights computed in f32\", \"latent\": [%lld, "
           "%lld], \"batch\": %lld, \"runs\": %d, \"stat\": \"median\",\n  \"unet_load_s\": %.2f, \"unet_first_call_s\": "
           "%.3f, \"unet_step_s\": %.4f, \"vae_decode_512_s\": %.4f,\n",
           (long long)h, (long long)w, (long long)B, runs, load_s, first_s, unet_s, vae_s);
    if (d32 > 0 && d16 > 0)
        printf("  \"diffusers_f32_step_s\": %.4f, \"diffusers_f16_step_s\": %.4f, \"diffusers_f32_over_ours\": %.2f, "
               "\"diffusers_f16_over_ours\": %.2f}\n", d32, d16, d32 / unet_s, d16 / unet_s);
    else
        printf("  \"diffusers_f32_step_s\": null, \"diffusers_f16_step_s\": null}\n");
    free(x), free(ctx), free(z);
    return 0;
}
