/* UNet2DConditionModel (see unet.h): config parsing, loading by diffusers' module tree,
 * and the forward pass (time embedding, down path collecting skips, mid block, up path
 * consuming them). Maths only: backend ops through diffusion_blocks.c. */
#include "unet.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"

/* ---------------------------------------------------------------- config */

mm_status mm_diffusers_weights_path(const char *dir, char *path, size_t cap) {
    static const char *names[] = {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                                  "diffusion_pytorch_model.fp16.safetensors",
                                  "diffusion_pytorch_model.fp16.safetensors.index.json"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, cap, "%s/%s", dir, names[i]);
        if (access(path, R_OK) == 0) return MM_OK;
    }
    return MM_ERROR(MM_ERR_NOT_FOUND, "%s: no diffusion_pytorch_model[.fp16].safetensors[.index.json]", dir);
}

static mm_status config_parse(const mm_json *root, const char *file, void *cfg) {
    mm_unet_config *c = cfg;
    memset(c, 0, sizeof *c);
    const char *cls;
    CHECK(mm_json_str(root, file, "_class_name", "UNet2DConditionModel", &cls));
    if (strcmp(cls, "UNet2DConditionModel"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: _class_name '%s' is not UNet2DConditionModel", file, cls);
    int32_t in_ch, out_ch, lpb, cross, groups, sample;
    double eps, shift;
    CHECK(mm_json_i32_in(root, file, "in_channels", 4, 1, 4096, &in_ch));
    CHECK(mm_json_i32_in(root, file, "out_channels", 4, 1, 4096, &out_ch));
    CHECK(mm_json_i32_in(root, file, "layers_per_block", 2, 1, MM_UNET_MAX_BLOCKS - 1, &lpb));
    CHECK(mm_json_i32_in(root, file, "cross_attention_dim", 1280, 1, 1 << 20, &cross));
    CHECK(mm_json_i32_in(root, file, "norm_num_groups", 32, 1, 1 << 16, &groups));
    CHECK(mm_json_i32_in(root, file, "sample_size", 64, 1, 1 << 16, &sample));
    CHECK(mm_json_num_in(root, file, "norm_eps", 1e-5, 0, 1, 0, &eps));
    CHECK(mm_json_num_in(root, file, "freq_shift", 0, -1e6, 1e6, 0, &shift));
    CHECK(mm_json_bool(root, file, "flip_sin_to_cos", 1, &c->flip_sin_to_cos));
    CHECK(mm_json_bool(root, file, "use_linear_projection", 0, &c->use_linear_projection));
    int center, only_cross, dual;
    CHECK(mm_json_bool(root, file, "center_input_sample", 0, &center));
    CHECK(mm_json_bool(root, file, "only_cross_attention", 0, &only_cross));
    CHECK(mm_json_bool(root, file, "dual_cross_attention", 0, &dual));
    if (center || only_cross || dual)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: center_input_sample, only_cross_attention and dual_cross_attention must be false", file);
    static const char *nulls[] = {"class_embed_type", "addition_embed_type", "encoder_hid_dim", "time_cond_proj_dim",
                                  "time_embedding_dim", "timestep_post_act", "num_class_embeds", "time_embedding_act_fn",
                                  "cross_attention_norm", "reverse_transformer_layers_per_block"};
    for (size_t i = 0; i < sizeof nulls / sizeof *nulls; i++) CHECK(mm_dn_json_require_null(root, file, nulls[i]));
    CHECK(mm_dn_json_require_str(root, file, "act_fn", "silu", "silu"));
    CHECK(mm_dn_json_require_str(root, file, "time_embedding_type", "positional", "positional"));
    CHECK(mm_dn_json_require_str(root, file, "resnet_time_scale_shift", "default", "default"));
    CHECK(mm_dn_json_require_str(root, file, "mid_block_type", "UNetMidBlock2DCrossAttn", "UNetMidBlock2DCrossAttn"));
    CHECK(mm_dn_json_require_str(root, file, "attention_type", "default", "default"));
    CHECK(mm_dn_json_require_int(root, file, "conv_in_kernel", 3, 3));
    CHECK(mm_dn_json_require_int(root, file, "conv_out_kernel", 3, 3));
    CHECK(mm_dn_json_require_int(root, file, "downsample_padding", 1, 1));
    double msf, rsf;
    CHECK(mm_json_num(root, file, "mid_block_scale_factor", 1.0, &msf));
    CHECK(mm_json_num(root, file, "resnet_out_scale_factor", 1.0, &rsf));
    if (msf != 1.0 || rsf != 1.0)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: mid_block_scale_factor and resnet_out_scale_factor must be 1", file);

    int64_t boc[MM_UNET_MAX_BLOCKS];
    int n = 0;
    CHECK(mm_json_int_list(root, file, "block_out_channels", boc, MM_UNET_MAX_BLOCKS, &n));
    if (n < 1) return MM_ERROR(MM_ERR_FORMAT, "%s: 'block_out_channels' missing or empty", file);
    const char *down[MM_UNET_MAX_BLOCKS], *up[MM_UNET_MAX_BLOCKS];
    int nd, nu;
    CHECK(mm_dn_json_str_list(root, file, "down_block_types", down, MM_UNET_MAX_BLOCKS, &nd));
    CHECK(mm_dn_json_str_list(root, file, "up_block_types", up, MM_UNET_MAX_BLOCKS, &nu));
    if (nd != n || nu != n)
        return MM_ERROR(MM_ERR_FORMAT, "%s: %d down_block_types and %d up_block_types for %d block_out_channels", file, nd, nu, n);
    c->n_blocks = n;
    for (int i = 0; i < n; i++) {
        if (boc[i] <= 0 || boc[i] > (1 << 20) || boc[i] % groups)
            return MM_ERROR(MM_ERR_FORMAT, "%s: key 'block_out_channels[%d]' = %lld is not a multiple of norm_num_groups "
                            "%d in [1, 2^20]", file, i, (long long)boc[i], groups);
        c->block_out_channels[i] = (int32_t)boc[i];
        if (!strcmp(down[i], "CrossAttnDownBlock2D")) c->cross_attn[i] = 1;
        else if (strcmp(down[i], "DownBlock2D"))
            return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: down_block_types[%d] '%s' (CrossAttnDownBlock2D, DownBlock2D)", file, i, down[i]);
        if (!strcmp(up[i], "CrossAttnUpBlock2D")) c->up_cross_attn[i] = 1;
        else if (strcmp(up[i], "UpBlock2D"))
            return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: up_block_types[%d] '%s' (CrossAttnUpBlock2D, UpBlock2D)", file, i, up[i]);
    }
    /* diffusers' legacy naming: attention_head_dim means the number of heads unless
     * num_attention_heads is given */
    const json_t *nah = (const json_t *)mm_json_get(root, "num_attention_heads");
    CHECK(mm_dn_json_int_or_list(root, file, nah && !json_is_null(nah) ? "num_attention_heads" : "attention_head_dim", n, 8, c->heads));
    CHECK(mm_dn_json_int_or_list(root, file, "transformer_layers_per_block", n, 1, c->transformer_layers));
    for (int i = 0; i < n; i++)
        if (c->heads[i] <= 0 || c->block_out_channels[i] % c->heads[i] || c->transformer_layers[i] <= 0)
            return MM_ERROR(MM_ERR_FORMAT, "%s: block %d: %d channels, %d heads, %d transformer layers", file, i,
                            c->block_out_channels[i], c->heads[i], c->transformer_layers[i]);
    c->in_channels = in_ch, c->out_channels = out_ch, c->layers_per_block = lpb;
    c->cross_attention_dim = cross, c->norm_num_groups = groups, c->norm_eps = (float)eps;
    c->freq_shift = (float)shift, c->sample_size = sample;
    return MM_OK;
}

mm_status mm_unet_config_load(const char *dir, mm_unet_config *cfg) {
    return mm_json_load_parsed(dir, "config.json", config_parse, cfg);
}

/* ---------------------------------------------------------------- loading */

static mm_status load_all(mm_unet *u) {
    const mm_unet_config *c = &u->cfg;
    mm_dn_loader *L = &u->loader;
    char name[256];
    int n = c->n_blocks;
    int32_t groups = c->norm_num_groups;
    float eps = c->norm_eps;
    int64_t c0 = c->block_out_channels[0], T = u->temb_dim, X = c->cross_attention_dim;
    CHECK(mm_dn_load_linear(L, "time_embedding.linear_1", c0, T, 1, &u->time_linear_1));
    CHECK(mm_dn_load_linear(L, "time_embedding.linear_2", T, T, 1, &u->time_linear_2));
    CHECK(mm_dn_load_conv(L, "conv_in", c->in_channels, c0, 3, &u->conv_in));
    int64_t out_ch = c0;
    for (int i = 0; i < n; i++) {
        mm_unet_block *b = &u->down[i];
        int64_t in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        b->n_layers = c->layers_per_block, b->has_attn = c->cross_attn[i];
        for (int l = 0; l < b->n_layers; l++) {
            snprintf(name, sizeof name, "down_blocks.%d.resnets.%d", i, l);
            CHECK(mm_dn_resnet_load(L, name, l == 0 ? in_ch : out_ch, out_ch, T, groups, eps, &b->resnets[l]));
            if (b->has_attn) {
                snprintf(name, sizeof name, "down_blocks.%d.attentions.%d", i, l);
                CHECK(mm_dn_transformer_load(L, name, out_ch, c->heads[i], c->transformer_layers[i], X, groups,
                                             c->use_linear_projection, &b->attentions[l]));
            }
        }
        if (i < n - 1) {
            snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0.conv", i);
            CHECK(mm_dn_load_conv(L, name, out_ch, out_ch, 3, &b->sampler));
        }
    }
    int64_t top = c->block_out_channels[n - 1];
    CHECK(mm_dn_resnet_load(L, "mid_block.resnets.0", top, top, T, groups, eps, &u->mid_resnets[0]));
    CHECK(mm_dn_transformer_load(L, "mid_block.attentions.0", top, c->heads[n - 1], c->transformer_layers[n - 1], X,
                                 groups, c->use_linear_projection, &u->mid_attn));
    CHECK(mm_dn_resnet_load(L, "mid_block.resnets.1", top, top, T, groups, eps, &u->mid_resnets[1]));
    int64_t prev_out = top;
    for (int i = 0; i < n; i++) {
        mm_unet_block *b = &u->up[i];
        int64_t C = c->block_out_channels[n - 1 - i], in_ch = c->block_out_channels[i + 1 < n ? n - 2 - i : 0];
        int r = n - 1 - i; /* the down block this one mirrors (its heads and transformer depth) */
        b->n_layers = c->layers_per_block + 1, b->has_attn = c->up_cross_attn[i];
        for (int l = 0; l < b->n_layers; l++) {
            int64_t skip = l == b->n_layers - 1 ? in_ch : C, res_in = l == 0 ? prev_out : C;
            snprintf(name, sizeof name, "up_blocks.%d.resnets.%d", i, l);
            CHECK(mm_dn_resnet_load(L, name, res_in + skip, C, T, groups, eps, &b->resnets[l]));
            if (b->has_attn) {
                snprintf(name, sizeof name, "up_blocks.%d.attentions.%d", i, l);
                CHECK(mm_dn_transformer_load(L, name, C, c->heads[r], c->transformer_layers[r], X, groups,
                                             c->use_linear_projection, &b->attentions[l]));
            }
        }
        if (i < n - 1) {
            snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0.conv", i);
            CHECK(mm_dn_load_conv(L, name, C, C, 3, &b->sampler));
        }
        prev_out = C;
    }
    CHECK(mm_dn_load_norm(L, "conv_norm_out", c0, &u->conv_norm_out));
    return mm_dn_load_conv(L, "conv_out", c0, c->out_channels, 3, &u->conv_out);
}

mm_status mm_unet_load(const char *dir, mm_backend *be, mm_unet **out) {
    static const char *ops[] = {"conv2d", "groupnorm", "upsample_nearest2x", "activation", "geglu", "concat_cols"};
    const void *fns[] = {(const void *)be->ops->conv2d, (const void *)be->ops->groupnorm, (const void *)be->ops->upsample_nearest2x,
                         (const void *)be->ops->activation, (const void *)be->ops->geglu, (const void *)be->ops->concat_cols};
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
        if (!fns[i]) return MM_ERROR(MM_ERR_UNSUPPORTED, "backend '%s' has no %s op (needed by the UNet)", be->ops->name, ops[i]);
    mm_unet *u = calloc(1, sizeof *u);
    CHECK(CHECK_ALLOC(u));
    u->be = be;
    mm_arena_init(&u->arena, be);
    mm_status s;
    char path[4096];
    CHECK_GOTO(mm_unet_config_load(dir, &u->cfg), s, fail);
    u->temb_dim = 4 * (int64_t)u->cfg.block_out_channels[0];
    CHECK_GOTO(mm_diffusers_weights_path(dir, path, sizeof path), s, fail);
    CHECK_GOTO(mm_safetensors_open(path, &u->st), s, fail);
    u->loader = (mm_dn_loader){.be = be, .st = u->st};
    CHECK_GOTO(load_all(u), s, fail);
    *out = u;
    return MM_OK;
fail:
    mm_unet_free(u);
    return s;
}

void mm_unet_free(mm_unet *u) {
    if (!u) return;
    mm_dn_loader_release(&u->loader);
    for (int i = 0; i < MM_UNET_MAX_BLOCKS; i++)
        for (int l = 0; l < MM_UNET_MAX_BLOCKS; l++) {
            mm_dn_transformer_free(&u->down[i].attentions[l]);
            mm_dn_transformer_free(&u->up[i].attentions[l]);
        }
    mm_dn_transformer_free(&u->mid_attn);
    mm_arena_free(&u->arena);
    mm_safetensors_close(u->st);
    free(u);
}

/* ---------------------------------------------------------------- forward */

void mm_unet_timestep_embedding(const float *timesteps, int64_t B, int32_t dim, int flip_sin_to_cos, float freq_shift,
                                float *emb) {
    int32_t half = dim / 2;
    for (int64_t b = 0; b < B; b++) {
        float *e = emb + b * dim;
        for (int32_t i = 0; i < half; i++) {
            /* exponent = -ln(10000) * i / (half - shift), all in f32 as torch does */
            float expo = -9.210340371976184f * (float)i / ((float)half - freq_shift);
            float arg = timesteps[b] * expf(expo);
            float s = sinf(arg), c = cosf(arg);
            e[i] = flip_sin_to_cos ? c : s;
            e[half + i] = flip_sin_to_cos ? s : c;
        }
        if (dim % 2) e[dim - 1] = 0.0f;
    }
}

/* Optional Transformer2DModel after a resnet: out = attn(h) or h itself. */
static mm_status block_layer(mm_arena *a, const mm_unet_block *b, int l, const float *x, const float *temb_act,
                             const float *ctx, int64_t B, int64_t H, int64_t W, int64_t T, float **out) {
    const mm_dn_resnet *r = &b->resnets[l];
    float *h;
    CHECK(mm_arena_floats(a, B * H * W * r->out, &h));
    CHECK(mm_dn_resnet_forward(a, r, x, temb_act, B, H, W, h));
    if (!b->has_attn) {
        *out = h;
        return MM_OK;
    }
    float *o;
    CHECK(mm_arena_floats(a, B * H * W * r->out, &o));
    CHECK(mm_dn_transformer_forward(a, &b->attentions[l], h, ctx, B, H * W, T, o));
    *out = o;
    return MM_OK;
}

mm_status mm_unet_forward(mm_unet *u, const float *x, const float *timesteps, const float *ctx, int64_t B, int64_t h,
                          int64_t w, int64_t T, float *eps) {
    const mm_unet_config *c = &u->cfg;
    mm_backend *be = u->be;
    mm_arena *a = &u->arena;
    int n = c->n_blocks;
    int64_t f = (int64_t)1 << (n - 1), c0 = c->block_out_channels[0];
    if (B <= 0 || h <= 0 || w <= 0 || h % f || w % f)
        return MM_ERROR(MM_ERR_INVALID, "UNet: latent %lldx%lld must be a positive multiple of %lld", (long long)h,
                        (long long)w, (long long)f);
    mm_arena_reset(a);
    mm_status s = MM_OK;
    /* time embedding: temb_act[B, temb] = silu(linear_2(silu(linear_1(sinusoid(t))))) */
    float *emb_host = malloc((size_t)(B * c0) * sizeof(float));
    CHECK(CHECK_ALLOC(emb_host));
    mm_unet_timestep_embedding(timesteps, B, (int32_t)c0, c->flip_sin_to_cos, c->freq_shift, emb_host);
    float *emb, *t1, *temb;
    CHECK_GOTO(mm_arena_floats(a, B * c0, &emb), s, done);
    CHECK_GOTO(mm_arena_floats(a, B * u->temb_dim, &t1), s, done);
    CHECK_GOTO(mm_arena_floats(a, B * u->temb_dim, &temb), s, done);
    CHECK_GOTO(be->ops->upload(be, emb, emb_host, (size_t)(B * c0) * sizeof(float)), s, done);
    CHECK_GOTO(mm_dn_linear_forward(be, &u->time_linear_1, emb, t1, B), s, done);
    CHECK_GOTO(be->ops->activation(be, t1, B * u->temb_dim, MM_ACT_SILU), s, done);
    CHECK_GOTO(mm_dn_linear_forward(be, &u->time_linear_2, t1, temb, B), s, done);
    CHECK_GOTO(be->ops->activation(be, temb, B * u->temb_dim, MM_ACT_SILU), s, done);

    /* down path: every block output is a skip connection, kept in the arena */
    float *skips[1 + MM_UNET_MAX_BLOCKS * (MM_UNET_MAX_BLOCKS + 1)]; /* [B, H, W, C] each */
    int64_t skip_c[sizeof skips / sizeof *skips];
    int n_skips = 0;
    int64_t H = h, W = w, C = c0;
    float *cur;
    CHECK_GOTO(mm_arena_floats(a, B * H * W * c0, &cur), s, done);
    CHECK_GOTO(mm_dn_conv_forward(be, &u->conv_in, x, cur, B, H, W, 1, 1), s, done);
    skips[n_skips] = cur, skip_c[n_skips++] = C;
    for (int i = 0; i < n; i++) {
        const mm_unet_block *b = &u->down[i];
        for (int l = 0; l < b->n_layers; l++) {
            CHECK_GOTO(block_layer(a, b, l, cur, temb, ctx, B, H, W, T, &cur), s, done);
            C = b->resnets[l].out;
            skips[n_skips] = cur, skip_c[n_skips++] = C;
        }
        if (b->sampler.w.data) {
            float *d;
            CHECK_GOTO(mm_arena_floats(a, B * (H / 2) * (W / 2) * C, &d), s, done);
            CHECK_GOTO(mm_dn_conv_forward(be, &b->sampler, cur, d, B, H, W, 2, 1), s, done);
            H /= 2, W /= 2, cur = d;
            skips[n_skips] = cur, skip_c[n_skips++] = C;
        }
    }
    /* mid block */
    float *m1, *m2, *m3;
    CHECK_GOTO(mm_arena_floats(a, B * H * W * C, &m1), s, done);
    CHECK_GOTO(mm_arena_floats(a, B * H * W * C, &m2), s, done);
    CHECK_GOTO(mm_arena_floats(a, B * H * W * C, &m3), s, done);
    CHECK_GOTO(mm_dn_resnet_forward(a, &u->mid_resnets[0], cur, temb, B, H, W, m1), s, done);
    CHECK_GOTO(mm_dn_transformer_forward(a, &u->mid_attn, m1, ctx, B, H * W, T, m2), s, done);
    CHECK_GOTO(mm_dn_resnet_forward(a, &u->mid_resnets[1], m2, temb, B, H, W, m3), s, done);
    cur = m3;
    /* up path: each layer concatenates the last skip to its input. Its stream buffers
     * stay in the arena until the forward ends (reused by the next call). */
    for (int i = 0; i < n; i++) {
        const mm_unet_block *b = &u->up[i];
        for (int l = 0; l < b->n_layers; l++) {
            int k = --n_skips;
            float *cat;
            CHECK_GOTO(mm_arena_floats(a, B * H * W * (C + skip_c[k]), &cat), s, done);
            CHECK_GOTO(be->ops->concat_cols(be, cur, skips[k], cat, B * H * W, C, skip_c[k]), s, done);
            CHECK_GOTO(block_layer(a, b, l, cat, temb, ctx, B, H, W, T, &cur), s, done);
            C = b->resnets[l].out;
        }
        if (b->sampler.w.data) {
            float *upx, *o;
            CHECK_GOTO(mm_arena_floats(a, B * 4 * H * W * C, &upx), s, done);
            CHECK_GOTO(mm_arena_floats(a, B * 4 * H * W * C, &o), s, done);
            CHECK_GOTO(be->ops->upsample_nearest2x(be, cur, upx, B, H, W, C), s, done);
            H *= 2, W *= 2;
            CHECK_GOTO(mm_dn_conv_forward(be, &b->sampler, upx, o, B, H, W, 1, 1), s, done);
            cur = o;
        }
    }
    /* out: conv_out(silu(conv_norm_out(h))) */
    float *nrm;
    CHECK_GOTO(mm_arena_floats(a, B * H * W * C, &nrm), s, done);
    CHECK_GOTO(be->ops->groupnorm(be, cur, (const float *)u->conv_norm_out.w.data, (const float *)u->conv_norm_out.b.data,
                                  nrm, B, H * W, C, c->norm_num_groups, c->norm_eps, 1), s, done);
    CHECK_GOTO(mm_dn_conv_forward(be, &u->conv_out, nrm, eps, B, H, W, 1, 1), s, done);
done:
    free(emb_host);
    mm_arena_reset(a);
    return s;
}
