/* The decoder pipeline (see decoder.h): wiring of adapter, sampler, UNet and VAE, and
 * the layout changes between diffusers' NCHW latents and the channels-last backend
 * tensors. No maths beyond guidance and postprocessing. */
#include "decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"

void mm_decode_params_default(mm_decode_params *p) {
    memset(p, 0, sizeof *p); /* size 0: the model's */
    mm_image_params_default(&p->image);
}

mm_status mm_decoder_load(const char *dir, mm_backend *be, mm_decoder **out) {
    mm_decoder *d = calloc(1, sizeof *d);
    CHECK(CHECK_ALLOC(d));
    d->be = be;
    char sub[4096];
    mm_status s;
    snprintf(sub, sizeof sub, "%s/adapter", dir);
    CHECK_GOTO(mm_adapter_load(sub, be, &d->adapter), s, fail);
    snprintf(sub, sizeof sub, "%s/unet", dir);
    CHECK_GOTO(mm_unet_load(sub, be, &d->unet), s, fail);
    snprintf(sub, sizeof sub, "%s/vae", dir);
    CHECK_GOTO(mm_vae_load(sub, be, &d->vae), s, fail);
    snprintf(d->scheduler_dir, sizeof d->scheduler_dir, "%s/scheduler", dir);
    mm_diffusion_sched *probe;
    CHECK_GOTO(mm_diffusion_sched_create(d->scheduler_dir, MM_DIFFUSION_SAMPLER_PNDM, 1, 1, &probe), s, fail); /* validate early */
    mm_diffusion_sched_free(probe);
    const mm_unet_config *uc = &d->unet->cfg;
    if (d->adapter->cfg.output_dim != uc->cross_attention_dim || d->vae->cfg.latent_channels != uc->in_channels ||
        uc->out_channels != uc->in_channels) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: adapter output_dim %d, UNet cross_attention_dim %d, UNet in/out channels %d/%d "
                     "and VAE latent_channels %d do not fit together", dir, d->adapter->cfg.output_dim,
                     uc->cross_attention_dim, uc->in_channels, uc->out_channels, d->vae->cfg.latent_channels);
        goto fail;
    }
    d->vae_scale = 1 << (d->vae->cfg.n_blocks - 1);
    *out = d;
    return MM_OK;
fail:
    mm_decoder_free(d);
    return s;
}

mm_status mm_decoder_default_side(const char *dir, int32_t *side) {
    char sub[4096];
    mm_unet_config uc;
    mm_vae_config vc;
    snprintf(sub, sizeof sub, "%s/unet", dir);
    CHECK(mm_unet_config_load(sub, &uc));
    snprintf(sub, sizeof sub, "%s/vae", dir);
    CHECK(mm_vae_config_load(sub, &vc));
    *side = uc.sample_size * (1 << (vc.n_blocks - 1)); /* as mm_decoder_load's vae_scale */
    return MM_OK;
}

void mm_decoder_free(mm_decoder *d) {
    if (!d) return;
    mm_adapter_free(d->adapter);
    mm_unet_free(d->unet);
    mm_vae_free(d->vae);
    free(d);
}

/* [C, h*w] <-> [h*w, C] for one image */
static void nchw_to_nhwc(const float *x, float *y, int64_t C, int64_t hw) {
    for (int64_t c = 0; c < C; c++)
        for (int64_t p = 0; p < hw; p++) y[p * C + c] = x[c * hw + p];
}

static void nhwc_to_nchw(const float *x, float *y, int64_t C, int64_t hw) {
    for (int64_t c = 0; c < C; c++)
        for (int64_t p = 0; p < hw; p++) y[c * hw + p] = x[p * C + c];
}

mm_status mm_decoder_sample(mm_decoder *d, const float *ctx, const mm_decode_params *p, int64_t h, int64_t w,
                            float *latents) {
    mm_backend *be = d->be;
    const mm_unet_config *uc = &d->unet->cfg;
    int64_t C = uc->in_channels, hw = h * w, n = C * hw, T = MM_ADAPTER_CONTEXT_TOKENS, X = uc->cross_attention_dim;
    int cfg_on = p->image.guidance > 1.0f; /* diffusers: do_classifier_free_guidance = guidance_scale > 1 */
    int64_t B = cfg_on ? 2 : 1;
    mm_diffusion_sched *sched = NULL;
    float *x_host = NULL, *eps_host = NULL, *x_be = NULL, *eps_be = NULL, *ctx2 = NULL;
    mm_status s;
    CHECK_GOTO(mm_diffusion_sched_create(d->scheduler_dir, p->image.sampler, p->image.steps, n, &sched), s, done);
    x_host = malloc((size_t)n * sizeof(float));         /* [h*w, C] current latents */
    eps_host = malloc((size_t)(B * n) * sizeof(float)); /* [B, h*w, C] */
    x_be = be->ops->alloc(be, (size_t)(B * n) * sizeof(float));
    eps_be = be->ops->alloc(be, (size_t)(B * n) * sizeof(float));
    ctx2 = be->ops->alloc(be, (size_t)(B * T * X) * sizeof(float)); /* [B, 77, X]: zeros, cond */
    if (!x_host || !eps_host || !x_be || !eps_be || !ctx2) {
        s = MM_ERROR(MM_ERR_NOMEM, "decoder sampling buffers");
        goto done;
    }
    if (cfg_on) {
        float *zeros = calloc((size_t)(T * X), sizeof(float));
        s = CHECK_ALLOC(zeros);
        if (s == MM_OK) s = be->ops->upload(be, ctx2, zeros, (size_t)(T * X) * sizeof(float));
        free(zeros);
        if (s != MM_OK) goto done;
    }
    CHECK_GOTO(be->ops->copy(be, ctx2 + (B - 1) * T * X, ctx, (size_t)(T * X) * sizeof(float)), s, done);
    nchw_to_nhwc(latents, x_host, C, hw); /* init_noise_sigma is 1 for all three samplers */
    int len = mm_diffusion_sched_len(sched);
    for (int i = 0; i < len; i++) {
        float t[2];
        t[0] = t[1] = (float)mm_diffusion_sched_timestep(sched, i);
        for (int64_t b = 0; b < B; b++)
            CHECK_GOTO(be->ops->upload(be, x_be + b * n, x_host, (size_t)n * sizeof(float)), s, done);
        CHECK_GOTO(mm_unet_forward(d->unet, x_be, t, ctx2, B, h, w, T, eps_be), s, done);
        CHECK_GOTO(be->ops->download(be, eps_host, eps_be, (size_t)(B * n) * sizeof(float)), s, done);
        if (cfg_on) /* eps = uncond + g (cond - uncond), in f32 as the pipeline does */
            for (int64_t k = 0; k < n; k++) eps_host[k] = eps_host[k] + p->image.guidance * (eps_host[n + k] - eps_host[k]);
        CHECK_GOTO(mm_diffusion_sched_step(sched, eps_host, x_host), s, done);
        if (p->progress && p->progress(p->user, i + 1, len)) {
            s = MM_ERROR(MM_ERR_CANCELLED, "cancelled after step %d of %d", i + 1, len);
            goto done;
        }
    }
    nhwc_to_nchw(x_host, latents, C, hw);
done:
    mm_diffusion_sched_free(sched);
    free(x_host), free(eps_host);
    be->ops->dealloc(be, x_be), be->ops->dealloc(be, eps_be), be->ops->dealloc(be, ctx2);
    return s;
}

mm_status mm_decoder_decode_latents(mm_decoder *d, const float *latents, int64_t h, int64_t w, uint8_t *rgb,
                                    float *image_f32) {
    mm_backend *be = d->be;
    int64_t C = d->vae->cfg.latent_channels, OC = d->vae->cfg.out_channels;
    int64_t H = h * d->vae_scale, W = w * d->vae_scale, npx = H * W;
    if (OC != 3) return MM_ERROR(MM_ERR_UNSUPPORTED, "VAE out_channels %lld: only RGB (3) images", (long long)OC);
    float *lat_host = malloc((size_t)(C * h * w) * sizeof(float)), *img_host = malloc((size_t)(npx * 3) * sizeof(float));
    float *lat_be = be->ops->alloc(be, (size_t)(C * h * w) * sizeof(float));
    float *img_be = be->ops->alloc(be, (size_t)(npx * 3) * sizeof(float));
    mm_status s = MM_OK;
    if (!lat_host || !img_host || !lat_be || !img_be) {
        s = MM_ERROR(MM_ERR_NOMEM, "VAE decode buffers for %lldx%lld", (long long)H, (long long)W);
        goto done;
    }
    nchw_to_nhwc(latents, lat_host, C, h * w);
    CHECK_GOTO(be->ops->upload(be, lat_be, lat_host, (size_t)(C * h * w) * sizeof(float)), s, done);
    CHECK_GOTO(mm_vae_decode(d->vae, lat_be, 1, h, w, img_be), s, done);
    CHECK_GOTO(be->ops->download(be, img_host, img_be, (size_t)(npx * 3) * sizeof(float)), s, done);
    for (int64_t i = 0; i < npx * 3; i++) {
        float v = img_host[i] / 2.0f + 0.5f;
        v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
        if (image_f32) image_f32[i] = v;
        if (rgb) rgb[i] = (uint8_t)nearbyintf(v * 255.0f);
    }
done:
    free(lat_host), free(img_host);
    be->ops->dealloc(be, lat_be), be->ops->dealloc(be, img_be);
    return s;
}

void mm_decoder_image_size(const mm_decoder *d, const mm_decode_params *p, int32_t *height, int32_t *width) {
    int32_t def = d->unet->cfg.sample_size * d->vae_scale;
    *height = p->height ? p->height : def;
    *width = p->width ? p->width : def;
}

mm_status mm_decoder_generate(mm_decoder *d, const float *tokens, int64_t n, const mm_decode_params *p, uint8_t *rgb,
                              float *latents_out) {
    mm_backend *be = d->be;
    const mm_unet_config *uc = &d->unet->cfg;
    int64_t f = (int64_t)d->vae_scale << (uc->n_blocks - 1);
    int32_t H32, W32;
    mm_decoder_image_size(d, p, &H32, &W32);
    int64_t H = H32, W = W32;
    if (H <= 0 || W <= 0 || H % f || W % f || H > 8192 || W > 8192)
        return MM_ERROR(MM_ERR_INVALID, "image size %lldx%lld must be a positive multiple of %lld (at most 8192)",
                        (long long)H, (long long)W, (long long)f);
    int64_t h = H / d->vae_scale, w = W / d->vae_scale, C = uc->in_channels;
    int64_t D = d->adapter->cfg.input_dim, X = uc->cross_attention_dim;
    float *tok_be = be->ops->alloc(be, (size_t)(n > 0 ? n * D : 1) * sizeof(float));
    float *ctx = be->ops->alloc(be, (size_t)(MM_ADAPTER_CONTEXT_TOKENS * X) * sizeof(float));
    float *lat = malloc((size_t)(C * h * w) * sizeof(float));
    mm_status s = MM_OK;
    if (!tok_be || !ctx || !lat) {
        s = MM_ERROR(MM_ERR_NOMEM, "decoder buffers");
        goto done;
    }
    for (int64_t i = 0; i < n * D; i++)
        if (!isfinite(tokens[i])) {
            s = MM_ERROR(MM_ERR_INVALID, "visual token %lld has a non-finite value", (long long)(i / D));
            goto done;
        }
    CHECK_GOTO(be->ops->upload(be, tok_be, tokens, (size_t)(n * D) * sizeof(float)), s, done);
    CHECK_GOTO(mm_adapter_forward(d->adapter, tok_be, n, ctx), s, done);
    if (p->init_latents)
        memcpy(lat, p->init_latents, (size_t)(C * h * w) * sizeof(float));
    else
        mm_noise_normal(p->image.seed, C * h * w, lat);
    CHECK_GOTO(mm_decoder_sample(d, ctx, p, h, w, lat), s, done);
    if (latents_out) memcpy(latents_out, lat, (size_t)(C * h * w) * sizeof(float));
    if (rgb) CHECK_GOTO(mm_decoder_decode_latents(d, lat, h, w, rgb, NULL), s, done);
done:
    be->ops->dealloc(be, tok_be), be->ops->dealloc(be, ctx);
    free(lat);
    return s;
}

mm_status mm_decoder_read_tokens(const char *path, int64_t dim, float **out, int64_t *n) {
    mm_safetensors *st;
    CHECK(mm_safetensors_open(path, &st));
    mm_status s = MM_OK;
    const mm_st_tensor *t = mm_safetensors_find(st, "tokens");
    if (!t && mm_safetensors_count(st) == 1) t = mm_safetensors_find(st, mm_safetensors_name(st, 0));
    float *f = NULL;
    if (!t) {
        s = MM_ERROR(MM_ERR_NOT_FOUND, "%s: no tensor 'tokens' (and not exactly one tensor)", path);
        goto done;
    }
    int lead_ok = t->ndim == 2 || (t->ndim == 3 && t->shape[0] == 1);
    int64_t rows = t->shape[t->ndim - 2], cols = t->shape[t->ndim - 1];
    if (!lead_ok || cols != dim || rows < 1 || rows > MM_ADAPTER_CONTEXT_TOKENS || !mm_dtype_is_float(t->dtype)) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' must be [n, %lld] or [1, n, %lld] float with 1 <= n <= %d "
                     "(has %d dims, last %lld, dtype %s)", path, t->name, (long long)dim, (long long)dim,
                     MM_ADAPTER_CONTEXT_TOKENS, t->ndim, (long long)cols, mm_dtype_name(t->dtype));
        goto done;
    }
    f = malloc((size_t)(rows * cols) * sizeof(float));
    if (!f) {
        s = MM_ERROR(MM_ERR_NOMEM, "%s: tokens", path);
        goto done;
    }
    for (int64_t i = 0; i < rows * cols; i++) {
        const void *d = t->data;
        f[i] = t->dtype == MM_DTYPE_F32 ? ((const float *)d)[i]
               : t->dtype == MM_DTYPE_BF16 ? mm_bf16_to_f32(((const uint16_t *)d)[i])
                                           : mm_f16_to_f32(((const uint16_t *)d)[i]);
        if (!isfinite(f[i])) {
            s = MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' token %lld has a non-finite value", path, t->name, (long long)(i / cols));
            goto done;
        }
    }
    *out = f, *n = rows;
    f = NULL;
done:
    free(f);
    mm_safetensors_close(st);
    return s;
}
