/* diffusers UNet2DConditionModel of the Stable Diffusion 1.x/2.x family, built from its
 * config.json (block_out_channels, layers_per_block, attention_head_dim /
 * num_attention_heads, cross_attention_dim, norm_num_groups, norm_eps,
 * transformer_layers_per_block, use_linear_projection, flip_sin_to_cos, freq_shift) and
 * loaded from diffusion_pytorch_model.safetensors with diffusers' weight names:
 * time_embedding.linear_{1,2}, conv_in, down_blocks.i.{resnets,attentions,downsamplers},
 * mid_block.{resnets,attentions}, up_blocks.i.{resnets,attentions,upsamplers},
 * conv_norm_out, conv_out. Block types: CrossAttnDownBlock2D, DownBlock2D,
 * UNetMidBlock2DCrossAttn, UpBlock2D, CrossAttnUpBlock2D; anything else is refused with
 * an error naming the config key. Maths only (backend ops). */
#ifndef MM_UNET_H
#define MM_UNET_H

#include "diffusion_blocks.h"

#define MM_UNET_MAX_BLOCKS 8

typedef struct {
    int32_t in_channels, out_channels;
    int32_t n_blocks;
    int32_t block_out_channels[MM_UNET_MAX_BLOCKS];
    int32_t heads[MM_UNET_MAX_BLOCKS];             /* per down block (up blocks use them reversed) */
    int32_t transformer_layers[MM_UNET_MAX_BLOCKS]; /* per down block */
    int cross_attn[MM_UNET_MAX_BLOCKS];            /* down block i is CrossAttnDownBlock2D */
    int up_cross_attn[MM_UNET_MAX_BLOCKS];         /* up block i is CrossAttnUpBlock2D */
    int32_t layers_per_block;
    int32_t cross_attention_dim;
    int32_t norm_num_groups;
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    int use_linear_projection;
    int32_t sample_size;
} mm_unet_config;

typedef struct {
    mm_dn_resnet resnets[MM_UNET_MAX_BLOCKS];
    mm_dn_transformer attentions[MM_UNET_MAX_BLOCKS];
    int n_layers, has_attn;
    mm_dn_conv sampler; /* downsamplers.0.conv / upsamplers.0.conv; w.data NULL if none */
} mm_unet_block;

typedef struct {
    mm_unet_config cfg;
    mm_backend *be;
    mm_safetensors *st;
    mm_dn_loader loader;
    mm_arena arena;
    mm_dn_linear time_linear_1, time_linear_2; /* [temb, c0], [temb, temb] */
    mm_dn_conv conv_in, conv_out;
    mm_dn_norm conv_norm_out;
    mm_unet_block down[MM_UNET_MAX_BLOCKS], up[MM_UNET_MAX_BLOCKS];
    mm_dn_resnet mid_resnets[2];
    mm_dn_transformer mid_attn;
    int64_t temb_dim; /* 4 * block_out_channels[0] */
} mm_unet;

/* Parses dir/config.json. */
mm_status mm_unet_config_load(const char *dir, mm_unet_config *cfg);
/* dir: the unet/ folder (config.json + diffusion_pytorch_model[.fp16].safetensors or its index). */
mm_status mm_unet_load(const char *dir, mm_backend *be, mm_unet **out);
void mm_unet_free(mm_unet *u);

/* eps[B, h, w, out_channels] = unet(x[B, h, w, in_channels], t[b], ctx[B, T, cross_attention_dim]).
 * x, ctx, eps: backend memory, channels-last; timesteps: host. h and w must be multiples of
 * 2^(n_blocks - 1). */
mm_status mm_unet_forward(mm_unet *u, const float *x, const float *timesteps, const float *ctx, int64_t B, int64_t h,
                          int64_t w, int64_t T, float *eps);

/* diffusers get_timestep_embedding in f32: emb[B, dim], flip_sin_to_cos puts cos first. */
void mm_unet_timestep_embedding(const float *timesteps, int64_t B, int32_t dim, int flip_sin_to_cos, float freq_shift,
                                float *emb);

/* Finds the weights file of a diffusers model folder: diffusion_pytorch_model.safetensors,
 * its .index.json, or the .fp16 variants, in that order. */
mm_status mm_diffusers_weights_path(const char *dir, char *path, size_t cap);

#endif
