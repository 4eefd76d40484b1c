/* bench/decoder_cpu: the diffusion decoder on the CPU backend at Stable Diffusion 1.5
 * shapes, printed as one JSON object: seconds per UNet call (64x64 latents, batch 2 =
 * classifier-free guidance, 77 x 768 conditioning) at 1 and 2 threads, its FLOP/s
 * against this backend's measured f32 GEMM peak (a 4096x1280x1280 matmul), and the VAE
 * decode (64x64 latents -> 512x512) seconds. If `python3` (or $MM_BENCH_PYTHON) has torch
 * and diffusers, bench/decoder_torch.py times the same UNet call in diffusers on this
 * machine and the ratio is printed. Weights are random (f16, SD 1.5 module tree and
 * config), written into --workdir (default: a temp dir). MM_BENCH_TRACE=1 prints the
 * time of every convolution on stderr. Run by hand, never by ctest. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "model/unet.h"
#include "model/vae.h"

#ifndef MM_SOURCE_DIR
#define MM_SOURCE_DIR "."
#endif

/* ---------------------------------------------------------------- random SD 1.5 weights */

static const char *SD15_UNET_CONFIG =
    "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", \"attention_head_dim\": 8,\n"
    " \"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": false, \"cross_attention_dim\": 768,\n"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"],\n"
    " \"downsample_padding\": 1, \"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2,\n"
    " \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, \"norm_num_groups\": 32, \"out_channels\": 4, \"sample_size\": 64,\n"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}\n";
static const char *SD15_VAE_CONFIG =
    "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", \"block_out_channels\": [128, 256, 512, 512],\n"
    " \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],\n"
    " \"in_channels\": 3, \"latent_channels\": 4, \"layers_per_block\": 2, \"norm_num_groups\": 32, \"out_channels\": 3,\n"
    " \"sample_size\": 512, \"scaling_factor\": 0.18215,\n"
    " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}\n";

typedef struct {
    mm_st_write_tensor *t;
    int n, cap;
    uint64_t rng;
} wlist;

/* name: shape (ndim 1: vectors; "weight" vectors of norms are 1, biases 0; else uniform
 * +-1/sqrt(fan_in), f16). */
static int add(wlist *L, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    if (L->n == L->cap) {
        L->cap = L->cap ? 2 * L->cap : 1024;
        L->t = realloc(L->t, (size_t)L->cap * sizeof *L->t);
        if (!L->t) return -1;
    }
    mm_st_write_tensor *t = &L->t[L->n++];
    int64_t sh[4] = {a, b, c, d}, n = 1, fan_in = 1;
    memset(t, 0, sizeof *t);
    t->name = strdup(name), t->dtype = MM_DTYPE_F16, t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = sh[i], n *= sh[i], fan_in *= i ? sh[i] : 1;
    uint16_t *v = malloc((size_t)n * 2);
    if (!v || !t->name) return -1;
    int is_norm_w = ndim == 1 && strstr(name, "norm") && strstr(name, ".weight");
    float scale = ndim == 1 ? 0.0f : 1.0f / sqrtf((float)fan_in);
    for (int64_t i = 0; i < n; i++)
        v[i] = mm_f32_to_f16(is_norm_w ? 1.0f : ndim == 1 ? 0.0f : (mm_rng_uniform(&L->rng) * 2.0f - 1.0f) * scale);
    t->data = v;
    return 0;
}

#define ADD(L, ...) (add(L, __VA_ARGS__) == 0)
static int add_lin(wlist *L, const char *p, int64_t in, int64_t out, int bias) {
    char n[256];
    snprintf(n, sizeof n, "%s.weight", p);
    if (!ADD(L, n, 2, out, in, 0, 0)) return -1;
    snprintf(n, sizeof n, "%s.bias", p);
    return bias && !ADD(L, n, 1, out, 0, 0, 0) ? -1 : 0;
}
static int add_conv(wlist *L, const char *p, int64_t in, int64_t out, int64_t k) {
    char n[256];
    snprintf(n, sizeof n, "%s.weight", p);
    if (!ADD(L, n, 4, out, in, k, k)) return -1;
    snprintf(n, sizeof n, "%s.bias", p);
    return ADD(L, n, 1, out, 0, 0, 0) ? 0 : -1;
}
static int add_norm(wlist *L, const char *p, int64_t C) {
    char n[256];
    snprintf(n, sizeof n, "%s.weight", p);
    if (!ADD(L, n, 1, C, 0, 0, 0)) return -1;
    snprintf(n, sizeof n, "%s.bias", p);
    return ADD(L, n, 1, C, 0, 0, 0) ? 0 : -1;
}

static int add_resnet(wlist *L, const char *p, int64_t in, int64_t out, int64_t temb) {
    char n[256];
    int e = 0;
#define S(x) (snprintf(n, sizeof n, "%s." x, p), n)
    e |= add_norm(L, S("norm1"), in) | add_conv(L, S("conv1"), in, out, 3) | add_norm(L, S("norm2"), out) |
         add_conv(L, S("conv2"), out, out, 3);
    if (temb) e |= add_lin(L, S("time_emb_proj"), temb, out, 1);
    if (in != out) e |= add_conv(L, S("conv_shortcut"), in, out, 1);
#undef S
    return e;
}

static int add_attn(wlist *L, const char *p, int64_t q, int64_t ctx, int bias) {
    char n[256];
    int e = 0;
#define S(x) (snprintf(n, sizeof n, "%s." x, p), n)
    e |= add_lin(L, S("to_q"), q, q, bias) | add_lin(L, S("to_k"), ctx, q, bias) | add_lin(L, S("to_v"), ctx, q, bias) |
         add_lin(L, S("to_out.0"), q, q, 1);
#undef S
    return e;
}

static int add_transformer(wlist *L, const char *p, int64_t C, int64_t X) {
    char n[256];
    int e = 0;
#define S(x) (snprintf(n, sizeof n, "%s." x, p), n)
    e |= add_norm(L, S("norm"), C) | add_conv(L, S("proj_in"), C, C, 1) | add_conv(L, S("proj_out"), C, C, 1);
    e |= add_norm(L, S("transformer_blocks.0.norm1"), C) | add_attn(L, S("transformer_blocks.0.attn1"), C, C, 0) |
         add_norm(L, S("transformer_blocks.0.norm2"), C) | add_attn(L, S("transformer_blocks.0.attn2"), C, X, 0) |
         add_norm(L, S("transformer_blocks.0.norm3"), C) | add_lin(L, S("transformer_blocks.0.ff.net.0.proj"), C, 8 * C, 1) |
         add_lin(L, S("transformer_blocks.0.ff.net.2"), 4 * C, C, 1);
#undef S
    return e;
}

/* The SD 1.5 UNet module tree (diffusers names). */
static int unet_tensors(wlist *L) {
    const int64_t ch[4] = {320, 640, 1280, 1280}, T = 1280, X = 768;
    char n[256];
    int e = add_lin(L, "time_embedding.linear_1", 320, T, 1) | add_lin(L, "time_embedding.linear_2", T, T, 1) |
            add_conv(L, "conv_in", 4, 320, 3);
    int64_t out = 320;
    for (int i = 0; i < 4; i++) {
        int64_t in = out;
        out = ch[i];
        for (int l = 0; l < 2; l++) {
            snprintf(n, sizeof n, "down_blocks.%d.resnets.%d", i, l);
            e |= add_resnet(L, n, l ? out : in, out, T);
            if (i < 3) {
                snprintf(n, sizeof n, "down_blocks.%d.attentions.%d", i, l);
                e |= add_transformer(L, n, out, X);
            }
        }
        if (i < 3) {
            snprintf(n, sizeof n, "down_blocks.%d.downsamplers.0.conv", i);
            e |= add_conv(L, n, out, out, 3);
        }
    }
    e |= add_resnet(L, "mid_block.resnets.0", 1280, 1280, T) | add_transformer(L, "mid_block.attentions.0", 1280, X) |
         add_resnet(L, "mid_block.resnets.1", 1280, 1280, T);
    int64_t prev = 1280;
    for (int i = 0; i < 4; i++) {
        int64_t C = ch[3 - i], in = ch[i < 3 ? 2 - i : 0];
        for (int l = 0; l < 3; l++) {
            snprintf(n, sizeof n, "up_blocks.%d.resnets.%d", i, l);
            e |= add_resnet(L, n, (l ? C : prev) + (l == 2 ? in : C), C, T);
            if (i > 0) {
                snprintf(n, sizeof n, "up_blocks.%d.attentions.%d", i, l);
                e |= add_transformer(L, n, C, X);
            }
        }
        if (i < 3) {
            snprintf(n, sizeof n, "up_blocks.%d.upsamplers.0.conv", i);
            e |= add_conv(L, n, C, C, 3);
        }
        prev = C;
    }
    return e | add_norm(L, "conv_norm_out", 320) | add_conv(L, "conv_out", 320, 4, 3);
}

/* The SD 1.5 VAE decoder half (the encoder is never read). */
static int vae_tensors(wlist *L) {
    const int64_t ch[4] = {512, 512, 256, 128};
    char n[256];
    int e = add_conv(L, "post_quant_conv", 4, 4, 1) | add_conv(L, "decoder.conv_in", 4, 512, 3) |
            add_resnet(L, "decoder.mid_block.resnets.0", 512, 512, 0) |
            add_norm(L, "decoder.mid_block.attentions.0.group_norm", 512) |
            add_attn(L, "decoder.mid_block.attentions.0", 512, 512, 1) |
            add_resnet(L, "decoder.mid_block.resnets.1", 512, 512, 0);
    int64_t prev = 512;
    for (int i = 0; i < 4; i++) {
        for (int l = 0; l < 3; l++) {
            snprintf(n, sizeof n, "decoder.up_blocks.%d.resnets.%d", i, l);
            e |= add_resnet(L, n, l ? ch[i] : prev, ch[i], 0);
        }
        if (i < 3) {
            snprintf(n, sizeof n, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            e |= add_conv(L, n, ch[i], ch[i], 3);
        }
        prev = ch[i];
    }
    return e | add_norm(L, "decoder.conv_norm_out", 128) | add_conv(L, "decoder.conv_out", 128, 3, 3);
}

static int write_model(const char *dir, const char *part, const char *config, int (*tensors)(wlist *), uint64_t seed) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, part);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/config.json", dir, part);
    FILE *f = fopen(path, "w");
    if (!f || fputs(config, f) < 0 || fclose(f) != 0) return -1;
    wlist L = {.rng = mm_rng_seed(seed)};
    int e = tensors(&L);
    snprintf(path, sizeof path, "%s/%s/diffusion_pytorch_model.safetensors", dir, part);
    if (!e && mm_safetensors_write(path, L.t, (size_t)L.n) != MM_OK) e = -1;
    for (int i = 0; i < L.n; i++) free((void *)L.t[i].name), free((void *)L.t[i].data);
    free(L.t);
    return e;
}

/* ---------------------------------------------------------------- FLOP counting */

/* The backend's own ops, wrapped to add up the multiply-adds of conv2d, matmul and
 * dense attention (x2 = FLOPs) of one forward. */
static const mm_backend_ops *real_ops;
static double flops, op_s[3]; /* seconds in conv2d, matmul, attention_dense */

static mm_status count_conv2d(mm_backend *be, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                              int64_t H, int64_t W, int32_t stride, int32_t pad) {
    int64_t k = w->shape[2], Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    flops += 2.0 * B * Ho * Wo * w->shape[0] * w->shape[1] * k * k;
    double t0 = mm_bench_now();
    mm_status s = real_ops->conv2d(be, w, bias, x, y, B, H, W, stride, pad);
    op_s[0] += mm_bench_now() - t0;
    if (getenv("MM_BENCH_TRACE"))
        fprintf(stderr, "conv B%lld %lldx%lld %lld->%lld k%lld s%d: %.3f s\n", (long long)B, (long long)H, (long long)W,
                (long long)w->shape[1], (long long)w->shape[0], (long long)k, stride, mm_bench_now() - t0);
    return s;
}
static mm_status count_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    flops += 2.0 * M * w->shape[0] * w->shape[1];
    double t0 = mm_bench_now();
    mm_status s = real_ops->matmul(be, w, x, y, M);
    op_s[1] += mm_bench_now() - t0;
    return s;
}
static mm_status count_attention(mm_backend *be, const float *q, const float *k, const float *v, int64_t batch, int64_t Tq,
                                 int64_t Tk, int32_t H, int32_t hd, float scale, float *out) {
    flops += 4.0 * batch * Tq * Tk * H * hd;
    double t0 = mm_bench_now();
    mm_status s = real_ops->attention_dense(be, q, k, v, batch, Tq, Tk, H, hd, scale, out);
    op_s[2] += mm_bench_now() - t0;
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
            double t0 = mm_bench_now();
            be->ops->matmul(be, &w, x, y, M);
            double g = 2.0 * M * K * N / (mm_bench_now() - t0) * 1e-9;
            best = g > best ? g : best;
        }
        be->ops->weight_release(be, &w);
    }
    free(wd), free(x), free(y);
    return best;
}

/* seconds of one diffusers UNet call at the same shapes, or < 0 when unavailable */
static double diffusers_step(int threads) {
    const char *py = getenv("MM_BENCH_PYTHON");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s/bench/decoder_torch.py --threads %d 2>/dev/null", py ? py : "python3", MM_SOURCE_DIR,
             threads);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    double s = -1;
    if (fscanf(p, "%lf", &s) != 1) s = -1;
    pclose(p);
    return s;
}

int main(int argc, char **argv) {
    const char *workdir = NULL;
    int runs = 1, with_torch = 1;
    static const struct option opts[] = {{"workdir", required_argument, 0, 'w'}, {"runs", required_argument, 0, 'r'},
                                         {"no-torch", no_argument, 0, 'n'}, {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "w:r:n", opts, NULL)) != -1;) {
        if (c == 'w') workdir = optarg;
        else if (c == 'r') runs = atoi(optarg);
        else if (c == 'n') with_torch = 0;
        else {
            fprintf(stderr, "usage: decoder_cpu [--workdir DIR] [--runs N] [--no-torch]\n");
            return 2;
        }
    }
    char tmpdir[] = "/tmp/mm_bench_decoder.XXXXXX";
    if (!workdir && !(workdir = mkdtemp(tmpdir))) return 1;
    char unet_dir[4096], vae_dir[4096];
    snprintf(unet_dir, sizeof unet_dir, "%s/unet", workdir);
    snprintf(vae_dir, sizeof vae_dir, "%s/vae", workdir);
    if (access(unet_dir, R_OK) != 0 || access(vae_dir, R_OK) != 0) {
        fprintf(stderr, "decoder_cpu: writing random SD 1.5 UNet + VAE (f16) into %s\n", workdir);
        if (write_model(workdir, "unet", SD15_UNET_CONFIG, unet_tensors, 1) || write_model(workdir, "vae", SD15_VAE_CONFIG, vae_tensors, 2)) {
            fprintf(stderr, "decoder_cpu: writing weights failed: %s\n", mm_error_last());
            return 1;
        }
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
        double t0 = mm_bench_now();
        if (mm_unet_load(unet_dir, be, &u) != MM_OK) {
            fprintf(stderr, "decoder_cpu: %s\n", mm_error_last());
            return 1;
        }
        double load_s = mm_bench_now() - t0;
        flops = 0;
        t0 = mm_bench_now();
        if (mm_unet_forward(u, x, t, ctx, B, h, w, T, eps) != MM_OK) {
            fprintf(stderr, "decoder_cpu: %s\n", mm_error_last());
            return 1;
        }
        double first_s = mm_bench_now() - t0, step_flops = flops, best = 1e30, split[3] = {0};
        for (int k = 0; k < runs; k++) {
            op_s[0] = op_s[1] = op_s[2] = 0;
            t0 = mm_bench_now();
            mm_unet_forward(u, x, t, ctx, B, h, w, T, eps);
            double s = mm_bench_now() - t0;
            if (s < best) best = s, memcpy(split, op_s, sizeof split);
        }
        be->ops = real_ops;
        double peak = gemm_peak(be), gflops = step_flops / best * 1e-9;
        double torch_s = with_torch ? diffusers_step(threads) : -1;
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
            t0 = mm_bench_now();
            mm_status s = mm_vae_decode(v, z, 1, h, w, img);
            double vae_s = mm_bench_now() - t0;
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
