/* The decoder half of diffusers' AutoencoderKL (post_quant_conv, decoder.conv_in,
 * decoder.mid_block with its attention, decoder.up_blocks of UpDecoderBlock2D,
 * decoder.conv_norm_out, decoder.conv_out), built from vae/config.json with the
 * scaling_factor (0.18215 for SD 1.x) and optional shift_factor. The encoder weights
 * in the file are never touched. Maths only (backend ops). */
#ifndef MM_VAE_H
#define MM_VAE_H

#include "diffusion_blocks.h"

#define MM_VAE_MAX_BLOCKS 8

typedef struct {
    int32_t latent_channels, out_channels;
    int32_t n_blocks;
    int32_t block_out_channels[MM_VAE_MAX_BLOCKS];
    int32_t layers_per_block;
    int32_t norm_num_groups;
    float scaling_factor, shift_factor;
    int use_post_quant_conv, mid_block_add_attention;
} mm_vae_config;

typedef struct {
    mm_dn_resnet resnets[MM_VAE_MAX_BLOCKS + 1];
    mm_dn_conv upsampler; /* w.data NULL on the last block */
} mm_vae_up_block;

typedef struct {
    mm_vae_config cfg;
    mm_backend *be;
    mm_safetensors *st;
    mm_dn_loader loader;
    mm_arena arena;
    mm_dn_conv post_quant_conv, conv_in, conv_out;
    mm_dn_resnet mid_resnets[2];
    mm_dn_norm mid_attn_norm; /* decoder.mid_block.attentions.0.group_norm */
    mm_dn_attention mid_attn;
    mm_vae_up_block up[MM_VAE_MAX_BLOCKS];
    mm_dn_norm conv_norm_out;
} mm_vae;

mm_status mm_vae_config_load(const char *dir, mm_vae_config *cfg);
/* dir: the vae/ folder (config.json + diffusion_pytorch_model[.fp16].safetensors). */
mm_status mm_vae_load(const char *dir, mm_backend *be, mm_vae **out);
void mm_vae_free(mm_vae *v);

/* image[B, 2^(n-1) h, 2^(n-1) w, out_channels] = decoder(latents / scaling_factor + shift_factor),
 * latents [B, h, w, latent_channels]; both backend memory, channels-last; values in about [-1, 1]. */
mm_status mm_vae_decode(mm_vae *v, const float *latents, int64_t B, int64_t h, int64_t w, float *image);

#endif
