/* SD 1.5-shaped random checkpoints and the diffusers timing: see sd15_weights.h. */
#include "bench/sd15_weights.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "kernels/backend.h"

#ifndef MM_SOURCE_DIR
#define MM_SOURCE_DIR "."
#endif

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
    if (!f || fputs(config, f) < 0 || fclose(f) != 0) {
        MM_ERROR(MM_ERR_IO, "writing %s: %s", path, strerror(errno));
        return -1;
    }
    wlist L = {.rng = mm_rng_seed(seed)};
    int e = tensors(&L);
    snprintf(path, sizeof path, "%s/%s/diffusion_pytorch_model.safetensors", dir, part);
    if (!e && mm_safetensors_write(path, L.t, (size_t)L.n) != MM_OK) e = -1;
    for (int i = 0; i < L.n; i++) free((void *)L.t[i].name), free((void *)L.t[i].data);
    free(L.t);
    return e;
}

int mm_bench_decoder_args_parse(int argc, char **argv, const char *prog, mm_bench_decoder_args *a) {
    static const struct option opts[] = {{"workdir", required_argument, 0, 'w'}, {"runs", required_argument, 0, 'r'},
                                         {"no-torch", no_argument, 0, 'n'}, {0, 0, 0, 0}};
    a->workdir = NULL, a->with_torch = 1;
    for (int c; (c = getopt_long(argc, argv, "w:r:n", opts, NULL)) != -1;) {
        if (c == 'w') a->workdir = optarg;
        else if (c == 'r') a->runs = atoi(optarg);
        else if (c == 'n') a->with_torch = 0;
        else {
            fprintf(stderr, "usage: %s [--workdir DIR] [--runs N (%d)] [--no-torch]\n", prog, a->runs);
            return 2;
        }
    }
    return 0;
}

int mm_bench_sd15_write(const char *dir) {
    char unet_dir[4096], vae_dir[4096];
    snprintf(unet_dir, sizeof unet_dir, "%s/unet", dir);
    snprintf(vae_dir, sizeof vae_dir, "%s/vae", dir);
    if (access(unet_dir, R_OK) == 0 && access(vae_dir, R_OK) == 0) return 0;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        MM_ERROR(MM_ERR_IO, "mkdir %s: %s", dir, strerror(errno));
        return -1;
    }
    fprintf(stderr, "bench: writing random SD 1.5 UNet + VAE (f16) into %s\n", dir);
    return write_model(dir, "unet", SD15_UNET_CONFIG, unet_tensors, 1) || write_model(dir, "vae", SD15_VAE_CONFIG, vae_tensors, 2)
               ? -1
               : 0;
}

double mm_bench_diffusers_step(const char *args) {
    const char *py = getenv("MM_BENCH_PYTHON");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s/bench/decoder_torch.py %s 2>/dev/null", py ? py : "python3", MM_SOURCE_DIR, args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    double s = -1;
    if (fscanf(p, "%lf", &s) != 1) s = -1;
    pclose(p);
    return s;
}
