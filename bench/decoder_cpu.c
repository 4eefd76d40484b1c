/* bench/decoder_cpu: the diffusion decoder on the CPU backend at Stable Diffusion 1.5
 * shapes, printed as one JSON object: seconds per UNet call (64x64 latents, batch 2 =
 * classifier-free guidance, 77 x 768 conditioning) at 1 and 2 threads, its FLOP/s
 * against this backend's measured f32 GEMM peak (a 4096x1280x1280 matmul), and the VAE
 * decode (64x64 latents -> 512x512) seconds. If `python3` (or $MM_BENCH_PYTHON) has torch
 * and diffusers, bench/decoder_torch.py times the same UNet call in diffusers on this
 * machine and the ratio is printed. Weights are random (f16, SD 1.5 module tree and
 * config), written into --workdir (default: a temp dir). MM_BENCH_TRACE=1 prints the
 * time of every convolution on stderr. Run by hand, never by ctest. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "bench/sd15_weights.h"
#include "model/unet.h"
#include "model/vae.h"


/* ---------------------------------------------------------------- FLOP counting */

/* The backend's own ops, wrapped to add up the multiply-adds of conv2d, matmul and
 * dense attention (x2 = FLOPs) of one forward. */
static const mm_backend_ops *real_ops;
static double flops, op_s[3]; /* seconds in conv2d, matmul, attention_dense */

static mm_status count_conv2d(mm_backend *be, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                              int64_t H, int64_t W, int32_t stride, int32_t pad) {
    int64_t k = w->shape[2], Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    flops += 2.0 * B * Ho * Wo * w->shape[0] * w->shape[1] * k * k;
    double t0 = mm_now_s();
    mm_status s = real_ops->conv2d(be, w, bias, x, y, B, H, W, stride, pad);
    op_s[0] += mm_now_s() - t0;
    if (getenv("MM_BENCH_TRACE"))
        fprintf(stderr, "conv B%lld %lldx%lld %lld->%lld k%lld s%d: %.3f s\n", (long long)B, (long long)H, (long long)W,
                (long long)w->shape[1], (long long)w->shape[0], (long long)k, stride, mm_now_s() - t0);
    return s;
}
static mm_status count_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    flops += 2.0 * M * w->shape[0] * w->shape[1];
    double t0 = mm_now_s();
    mm_status s = real_ops->matmul(be, w, x, y, M);
    op_s[1] += mm_now_s() - t0;
    return s;
}
static mm_status count_attention(mm_backend *be, const float *q, const float *k, const float *v, int64_t batch, int64_t Tq,
                                 int64_t Tk, int32_t H, int32_t hd, float scale, float *out) {
    flops += 4.0 * batch * Tq * Tk * H * hd;
    double t0 = mm_now_s();
    mm_status s = real_ops->attention_dense(be, q, k, v, batch, Tq, Tk, H, hd, scale, out);
    op_s[2] += mm_now_s() - t0;
    return s;
}

static double gemm_peak(mm_backend *be) {
    const int64_t M = 4096, K = 1280, N = 1280;
    mm_st_tensor st = {.name = "w", .file = "bench", .dtype = MM_DTYPE_F32, .ndim = 2, .shape = {N, K}, .numel = N * K};
    float *wd = calloc((size_t)(N * K), 4), *x = calloc((size_t)(M * K), 4), *y = calloc((size_t)(M * N), 4);
    st.data = wd;
    mm_tensor w;
    double best = 0;
    if (wd && x && y && be->ops->weight_load(be, &st, MM_WEIGHT_MATMUL, &w) == MM_OK) {
        be->ops->matmul(be, &w, x, y, M);
        for (int r = 0; r < 3; r++) {
            double t0 = mm_now_s();
            be->ops->matmul(be, &w, x, y, M);
            double g = 2.0 * M * K * N / (mm_now_s() - t0) * 1e-9;
            best = g > best ? g : best;
        }
        be->ops->weight_release(be, &w);
    }
    free(wd), free(x), free(y);
    return best;
}

int main(int argc, char **argv) {
    mm_bench_decoder_args args = {.runs = 1};
    if (mm_bench_decoder_args_parse(argc, argv, "decoder_cpu", &args)) return 2;
    const char *workdir = args.workdir;
    int runs = args.runs, with_torch = args.with_torch;
    char tmpdir[] = "/tmp/mm_bench_decoder.XXXXXX";
    if (!workdir && !(workdir = mkdtemp(tmpdir))) return 1;
    char unet_dir[4096], vae_dir[4096];
    snprintf(unet_dir, sizeof unet_dir, "%s/unet", workdir);
    snprintf(vae_dir, sizeof vae_dir, "%s/vae", workdir);
    if (mm_bench_sd15_write(workdir) != 0) {
        fprintf(stderr, "decoder_cpu: writing weights failed: %s\n", mm_error_last());
        return 1;
    }
    const int64_t B = 2, h = 64, w = 64, T = 77, X = 768;
    float *x = malloc((size_t)(B * h * w * 4) * 4), *ctx = calloc((size_t)(B * T * X), 4), *eps = malloc((size_t)(B * h * w * 4) * 4);
    uint64_t r = mm_rng_seed(7);
    for (int64_t i = 0; i < B * h * w * 4; i++) x[i] = mm_rng_uniform(&r) * 2 - 1;
    for (int64_t i = T * X; i < B * T * X; i++) ctx[i] = mm_rng_uniform(&r) * 2 - 1;
    float t[2] = {981, 981};
    printf("{\"bench\": \"decoder_cpu\", \"unet\": \"SD 1.5 shapes, f16 weights computed in f32\", \"latent\": [%lld, %lld], "
           "\"batch\": %lld, \"context\": [%lld, %lld], \"results\": [",
           (long long)h, (long long)w, (long long)B, (long long)T, (long long)X);
    for (int threads = 1; threads <= 2; threads++) {
        mm_backend *be;
        mm_unet *u;
        if (mm_backend_cpu_init(threads, &be) != MM_OK) return 1;
        real_ops = be->ops;
        mm_backend_ops counted = *be->ops;
        counted.conv2d = count_conv2d, counted.matmul = count_matmul, counted.attention_dense = count_attention;
        be->ops = &counted;
        double t0 = mm_now_s();
        if (mm_unet_load(unet_dir, be, &u) != MM_OK) {
            fprintf(stderr, "decoder_cpu: %s\n", mm_error_last());
            return 1;
        }
        double load_s = mm_now_s() - t0;
        flops = 0;
        t0 = mm_now_s();
        if (mm_unet_forward(u, x, t, ctx, B, h, w, T, eps) != MM_OK) {
            fprintf(stderr, "decoder_cpu: %s\n", mm_error_last());
            return 1;
        }
        double first_s = mm_now_s() - t0, step_flops = flops, best = 1e30, split[3] = {0};
        for (int k = 0; k < runs; k++) {
            op_s[0] = op_s[1] = op_s[2] = 0;
            t0 = mm_now_s();
            mm_unet_forward(u, x, t, ctx, B, h, w, T, eps);
            double s = mm_now_s() - t0;
            if (s < best) best = s, memcpy(split, op_s, sizeof split);
        }
        be->ops = real_ops;
        double peak = gemm_peak(be), gflops = step_flops / best * 1e-9;
        char args[64];
        snprintf(args, sizeof args, "--threads %d", threads);
        double torch_s = with_torch ? mm_bench_diffusers_step(args) : -1;
        printf("%s{\"threads\": %d, \"unet_load_s\": %.2f, \"unet_first_call_s\": %.3f, \"unet_step_s\": %.3f, "
               "\"unet_gflop_per_step\": %.1f, \"gflops\": %.1f, \"gemm_peak_gflops\": %.1f, \"fraction_of_gemm_peak\": %.3f, "
               "\"seconds_in\": {\"conv2d\": %.2f, \"linear\": %.2f, \"attention\": %.2f, \"other\": %.2f}, ",
               threads > 1 ? ", " : "", threads, load_s, first_s, best, step_flops * 1e-9, gflops, peak,
               peak > 0 ? gflops / peak : 0.0, split[0], split[1], split[2], best - split[0] - split[1] - split[2]);
        if (torch_s > 0)
            printf("\"diffusers_step_s\": %.3f, \"diffusers_over_ours\": %.2f", torch_s, torch_s / best);
        else
            printf("\"diffusers_step_s\": null");
        if (threads == 2) {
            mm_unet_free(u);
            u = NULL;
            mm_vae *v;
            float *z = malloc((size_t)(h * w * 4) * 4), *img = malloc((size_t)(8 * h * 8 * w * 3) * 4);
            for (int64_t i = 0; i < h * w * 4; i++) z[i] = (mm_rng_uniform(&r) * 2 - 1) * 0.18215f;
            if (!z || !img || mm_vae_load(vae_dir, be, &v) != MM_OK) {
                fprintf(stderr, "decoder_cpu: %s\n", mm_error_last());
                return 1;
            }
            t0 = mm_now_s();
            mm_status s = mm_vae_decode(v, z, 1, h, w, img);
            double vae_s = mm_now_s() - t0;
            printf(", \"vae_decode_512_s\": %.3f%s", vae_s, s == MM_OK ? "" : ", \"vae_error\": true");
            mm_vae_free(v);
            free(z), free(img);
        }
        printf("}");
        fflush(stdout);
        mm_unet_free(u);
        mm_backend_free(be);
    }
    printf("]}\n");
    free(x), free(ctx), free(eps);
    return 0;
}
