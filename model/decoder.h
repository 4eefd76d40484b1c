/* The diffusion decoder pipeline: 64 visual tokens -> adapter -> 77-token conditioning
 * -> UNet sampled with classifier-free guidance (all-zero negative embeddings; the
 * unconditional and conditional rows run as one batch of 2, unconditional first, as
 * diffusers' StableDiffusionPipeline does) -> VAE decode -> 8-bit RGB, postprocessed
 * like diffusers ((x / 2 + 0.5) clamped to [0, 1], * 255, rounded half to even).
 * Loads a decoder/ directory in the diffusers layout: unet/, vae/, scheduler/, adapter/. */
#ifndef MM_DECODER_H
#define MM_DECODER_H

#include <stdint.h>

#include "adapter.h"
#include "diffusion_sched.h"
#include "image_params.h"
#include "unet.h"
#include "vae.h"

typedef struct {
    mm_backend *be;
    mm_adapter *adapter;
    mm_unet *unet;
    mm_vae *vae;
    char scheduler_dir[4096];
    int32_t vae_scale; /* image side / latent side: 2^(VAE blocks - 1) */
} mm_decoder;

typedef struct {
    mm_image_params image;     /* steps, guidance (<= 1: one UNet row per call), sampler, seed (for
                                  mm_noise_normal when init_latents is NULL) */
    int32_t height, width;     /* pixels, multiples of vae_scale * 2^(UNet blocks - 1); 0: the
                                  UNet's sample_size * vae_scale (512 for SD 1.5), as diffusers */
    const float *init_latents; /* [1, C, h, w] NCHW host (e.g. the reference's noise) or NULL */
    /* called after each UNet call (i = 1..n) from the calling thread; may be NULL. Non-zero
     * stops the sampling: mm_decoder_generate/sample return MM_ERR_CANCELLED ("cancelled
     * after step i of n"), nothing decoded, latents_out untouched. */
    int (*progress)(void *user, int i, int n);
    void *user;
} mm_decode_params;

/* Defaults: mm_image_params_default's, the model's size, no callback. */
void mm_decode_params_default(mm_decode_params *p);

mm_status mm_decoder_load(const char *dir, mm_backend *be, mm_decoder **out);
void mm_decoder_free(mm_decoder *d);

/* The side in pixels of the images the decoder in dir draws by default (the UNet's
 * sample_size * the VAE's scale), from its configs alone (no weights mapped). */
mm_status mm_decoder_default_side(const char *dir, int32_t *side);

/* Image size of p (its height/width, or the model's default when 0). */
void mm_decoder_image_size(const mm_decoder *d, const mm_decode_params *p, int32_t *height, int32_t *width);

/* tokens[n, input_dim] (host) -> rgb[height, width, 3] (host, may be NULL); latents_out
 * [1, C, h, w] NCHW host (may be NULL) receives the final latents before the VAE. */
mm_status mm_decoder_generate(mm_decoder *d, const float *tokens, int64_t n, const mm_decode_params *p, uint8_t *rgb,
                              float *latents_out);

/* Sampling loop alone: latents [1, C, h, w] NCHW host in (noise) and out (denoised);
 * ctx [77, cross_attention_dim] backend memory (the adapter output). */
mm_status mm_decoder_sample(mm_decoder *d, const float *ctx, const mm_decode_params *p, int64_t h, int64_t w,
                            float *latents);

/* rgb[H, W, 3] = postprocess(vae(latents [1, C, h, w] NCHW host)); image_f32 [H, W, 3]
 * (may be NULL) gets the float image in [0, 1] before rounding. */
mm_status mm_decoder_decode_latents(mm_decoder *d, const float *latents, int64_t h, int64_t w, uint8_t *rgb,
                                    float *image_f32);

/* Reads visual tokens from a safetensors file: the tensor "tokens" (or the file's only
 * tensor), [n, dim] or [1, n, dim], f32/f16/bf16, 1 <= n <= 77, every value finite.
 * *out is malloc'd [n, dim] f32. Errors name the file and what is wrong. */
mm_status mm_decoder_read_tokens(const char *path, int64_t dim, float **out, int64_t *n);

#endif
