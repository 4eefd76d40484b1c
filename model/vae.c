/* AutoencoderKL decoder (see vae.h), after diffusers' autoencoder_kl.py (decode) and
 * vae.py (Decoder): resnets without time embedding, group-norm eps 1e-6, the mid
 * block's single-head attention with its own group_norm and a residual connection,
 * nearest-2x + 3x3 conv upsamplers. Maths only. */
#include "vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet.h" /* mm_diffusers_weights_path */

#define VAE_EPS 1e-6f

static mm_status config_parse(const mm_json *root, const char *file, void *cfg) {
    mm_vae_config *c = cfg;
    memset(c, 0, sizeof *c);
    const char *cls;
    CHECK(mm_json_str(root, file, "_class_name", "AutoencoderKL", &cls));
    if (strcmp(cls, "AutoencoderKL")) return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: _class_name '%s' is not AutoencoderKL", file, cls);
    int32_t latent, out_ch, lpb, groups;
    int64_t boc[MM_VAE_MAX_BLOCKS];
    int n = 0;
    double scale, shift;
    CHECK(mm_json_i32_in(root, file, "latent_channels", 4, 1, 4096, &latent));
    CHECK(mm_json_i32_in(root, file, "out_channels", 3, 1, 4096, &out_ch));
    CHECK(mm_json_i32_in(root, file, "layers_per_block", 1, 1, MM_VAE_MAX_BLOCKS - 1, &lpb));
    CHECK(mm_json_i32_in(root, file, "norm_num_groups", 32, 1, 1 << 16, &groups));
    CHECK(mm_json_num_in(root, file, "scaling_factor", 0.18215, 0, 1e6, 1, &scale));
    CHECK(mm_json_num_in(root, file, "shift_factor", 0.0, -1e6, 1e6, 0, &shift)); /* null in SD 1.x: 0 */
    CHECK(mm_json_bool(root, file, "use_post_quant_conv", 1, &c->use_post_quant_conv));
    CHECK(mm_json_bool(root, file, "mid_block_add_attention", 1, &c->mid_block_add_attention));
    CHECK(mm_dn_json_require_str(root, file, "act_fn", "silu", "silu"));
    CHECK(mm_dn_json_require_null(root, file, "latents_mean"));
    CHECK(mm_json_int_list(root, file, "block_out_channels", boc, MM_VAE_MAX_BLOCKS, &n));
    const char *up[MM_VAE_MAX_BLOCKS];
    int nu;
    CHECK(mm_dn_json_str_list(root, file, "up_block_types", up, MM_VAE_MAX_BLOCKS, &nu));
    if (n < 1 || nu != n) return MM_ERROR(MM_ERR_FORMAT, "%s: %d up_block_types for %d block_out_channels", file, nu, n);
    for (int i = 0; i < n; i++) {
        if (strcmp(up[i], "UpDecoderBlock2D"))
            return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: up_block_types[%d] '%s' (only UpDecoderBlock2D)", file, i, up[i]);
        if (boc[i] <= 0 || boc[i] > (1 << 20) || boc[i] % groups)
            return MM_ERROR(MM_ERR_FORMAT, "%s: key 'block_out_channels[%d]' = %lld is not a multiple of norm_num_groups "
                            "%d in [1, 2^20]", file, i, (long long)boc[i], groups);
        c->block_out_channels[i] = (int32_t)boc[i];
    }
    c->latent_channels = latent, c->out_channels = out_ch, c->n_blocks = n;
    c->layers_per_block = lpb, c->norm_num_groups = groups;
    c->scaling_factor = (float)scale, c->shift_factor = (float)shift;
    return MM_OK;
}

mm_status mm_vae_config_load(const char *dir, mm_vae_config *cfg) {
    return mm_json_load_parsed(dir, "config.json", config_parse, cfg);
}

static mm_status load_all(mm_vae *v) {
    const mm_vae_config *c = &v->cfg;
    mm_dn_loader *L = &v->loader;
    int n = c->n_blocks;
    int32_t g = c->norm_num_groups;
    int64_t top = c->block_out_channels[n - 1], lc = c->latent_channels;
    char name[256];
    if (c->use_post_quant_conv) CHECK(mm_dn_load_conv(L, "post_quant_conv", lc, lc, 1, &v->post_quant_conv));
    CHECK(mm_dn_load_conv(L, "decoder.conv_in", lc, top, 3, &v->conv_in));
    CHECK(mm_dn_resnet_load(L, "decoder.mid_block.resnets.0", top, top, 0, g, VAE_EPS, &v->mid_resnets[0]));
    if (c->mid_block_add_attention) {
        /* heads = channels / attention_head_dim with attention_head_dim = channels: one head */
        CHECK(mm_dn_load_norm(L, "decoder.mid_block.attentions.0.group_norm", top, &v->mid_attn_norm));
        CHECK(mm_dn_attention_load(L, "decoder.mid_block.attentions.0", top, top, 1, (int32_t)top, 1, &v->mid_attn));
    }
    CHECK(mm_dn_resnet_load(L, "decoder.mid_block.resnets.1", top, top, 0, g, VAE_EPS, &v->mid_resnets[1]));
    int64_t prev = top;
    for (int i = 0; i < n; i++) {
        int64_t C = c->block_out_channels[n - 1 - i];
        for (int l = 0; l <= c->layers_per_block; l++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, l);
            CHECK(mm_dn_resnet_load(L, name, l == 0 ? prev : C, C, 0, g, VAE_EPS, &v->up[i].resnets[l]));
        }
        if (i < n - 1) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            CHECK(mm_dn_load_conv(L, name, C, C, 3, &v->up[i].upsampler));
        }
        prev = C;
    }
    CHECK(mm_dn_load_norm(L, "decoder.conv_norm_out", c->block_out_channels[0], &v->conv_norm_out));
    return mm_dn_load_conv(L, "decoder.conv_out", c->block_out_channels[0], c->out_channels, 3, &v->conv_out);
}

mm_status mm_vae_load(const char *dir, mm_backend *be, mm_vae **out) {
    if (!be->ops->conv2d || !be->ops->groupnorm || !be->ops->upsample_nearest2x)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "backend '%s' lacks conv2d/groupnorm/upsample (needed by the VAE)", be->ops->name);
    mm_vae *v = calloc(1, sizeof *v);
    CHECK(CHECK_ALLOC(v));
    v->be = be;
    mm_arena_init(&v->arena, be);
    mm_status s;
    char path[4096];
    CHECK_GOTO(mm_vae_config_load(dir, &v->cfg), s, fail);
    CHECK_GOTO(mm_diffusers_weights_path(dir, path, sizeof path), s, fail);
    CHECK_GOTO(mm_safetensors_open(path, &v->st), s, fail);
    v->loader = (mm_dn_loader){.be = be, .st = v->st};
    CHECK_GOTO(load_all(v), s, fail);
    *out = v;
    return MM_OK;
fail:
    mm_vae_free(v);
    return s;
}

void mm_vae_free(mm_vae *v) {
    if (!v) return;
    mm_dn_loader_release(&v->loader);
    mm_arena_free(&v->arena);
    mm_safetensors_close(v->st);
    free(v);
}

/* The decoder is a chain: two ping-pong buffers p0/p1 of the largest feature map carry
 * it, p2 holds the group-normed or upsampled temporaries; module scratch comes from the
 * arena above them. */
mm_status mm_vae_decode(mm_vae *v, const float *latents, int64_t B, int64_t h, int64_t w, float *image) {
    const mm_vae_config *c = &v->cfg;
    mm_backend *be = v->be;
    mm_arena *a = &v->arena;
    int n = c->n_blocks;
    int64_t lc = c->latent_channels, H = h, W = w, C = c->block_out_channels[n - 1];
    if (B <= 0 || h <= 0 || w <= 0) return MM_ERROR(MM_ERR_INVALID, "VAE: empty latents");
    int64_t maxn = B * H * W * (C > lc ? C : lc);
    for (int i = 0, hh = 1; i < n; i++) {
        int64_t Ci = c->block_out_channels[n - 1 - i], px = B * H * W * hh * hh;
        maxn = px * Ci > maxn ? px * Ci : maxn;
        if (i < n - 1) hh *= 2, maxn = 4 * px * Ci > maxn ? 4 * px * Ci : maxn;
    }
    mm_arena_reset(a);
    mm_status s = MM_OK;
    float *p0, *p1, *p2, *cur;
#define NEXT(x) ((x) == p0 ? p1 : p0)
    /* z = latents / scaling_factor + shift_factor, on a host copy (small) */
    float *zh = malloc((size_t)(B * h * w * lc) * sizeof(float));
    CHECK(CHECK_ALLOC(zh));
    CHECK_GOTO(mm_arena_floats(a, maxn, &p0), s, done);
    CHECK_GOTO(mm_arena_floats(a, maxn, &p1), s, done);
    CHECK_GOTO(mm_arena_floats(a, maxn, &p2), s, done);
    CHECK_GOTO(be->ops->download(be, zh, latents, (size_t)(B * h * w * lc) * sizeof(float)), s, done);
    for (int64_t i = 0; i < B * h * w * lc; i++) zh[i] = zh[i] / c->scaling_factor + c->shift_factor;
    CHECK_GOTO(be->ops->upload(be, p0, zh, (size_t)(B * h * w * lc) * sizeof(float)), s, done);
    cur = p0;
    if (v->post_quant_conv.w.data) {
        CHECK_GOTO(mm_dn_conv_forward(be, &v->post_quant_conv, cur, NEXT(cur), B, H, W, 1, 0), s, done);
        cur = NEXT(cur);
    }
    CHECK_GOTO(mm_dn_conv_forward(be, &v->conv_in, cur, NEXT(cur), B, H, W, 1, 1), s, done);
    cur = NEXT(cur);
    /* mid block: resnet, (group_norm -> attention + residual), resnet */
    CHECK_GOTO(mm_dn_resnet_forward(a, &v->mid_resnets[0], cur, NULL, B, H, W, NEXT(cur)), s, done);
    cur = NEXT(cur);
    if (v->mid_attn.to_q.w.data) {
        CHECK_GOTO(be->ops->groupnorm(be, cur, (const float *)v->mid_attn_norm.w.data, (const float *)v->mid_attn_norm.b.data,
                                      p2, B, H * W, C, c->norm_num_groups, VAE_EPS, 0), s, done);
        CHECK_GOTO(mm_dn_attention_forward(a, &v->mid_attn, p2, NULL, B, H * W, H * W, NEXT(cur)), s, done);
        CHECK_GOTO(be->ops->add(be, NEXT(cur), cur, B * H * W * C), s, done);
        cur = NEXT(cur);
    }
    CHECK_GOTO(mm_dn_resnet_forward(a, &v->mid_resnets[1], cur, NULL, B, H, W, NEXT(cur)), s, done);
    cur = NEXT(cur);
    for (int i = 0; i < n; i++) {
        for (int l = 0; l <= c->layers_per_block; l++) {
            const mm_dn_resnet *r = &v->up[i].resnets[l];
            CHECK_GOTO(mm_dn_resnet_forward(a, r, cur, NULL, B, H, W, NEXT(cur)), s, done);
            cur = NEXT(cur), C = r->out;
        }
        if (v->up[i].upsampler.w.data) {
            CHECK_GOTO(be->ops->upsample_nearest2x(be, cur, p2, B, H, W, C), s, done);
            H *= 2, W *= 2;
            CHECK_GOTO(mm_dn_conv_forward(be, &v->up[i].upsampler, p2, NEXT(cur), B, H, W, 1, 1), s, done);
            cur = NEXT(cur);
        }
    }
    CHECK_GOTO(be->ops->groupnorm(be, cur, (const float *)v->conv_norm_out.w.data, (const float *)v->conv_norm_out.b.data,
                                  p2, B, H * W, C, c->norm_num_groups, VAE_EPS, 1), s, done);
    CHECK_GOTO(mm_dn_conv_forward(be, &v->conv_out, p2, image, B, H, W, 1, 1), s, done);
#undef NEXT
done:
    free(zh);
    mm_arena_reset(a);
    return s;
}
