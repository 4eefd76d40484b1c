/* The SigLIP vision tower as MetaMorph uses it (DESIGN section 1): an HF SigLIP vision
 * checkpoint (config.json of a SiglipVisionModel, or of a SiglipModel with its
 * "vision_config"; preprocessor_config.json of a SiglipImageProcessor; tensors
 * vision_model.*) at any size. Module and weight names mirror the checkpoint:
 *   vision_model.embeddings.{patch_embedding (Conv2d, stride = kernel = patch),
 *                            position_embedding}
 *   vision_model.encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj,
 *                                  layer_norm2, mlp.{fc1, fc2}}
 * The output is the last encoder layer's hidden state, before post_layernorm (the
 * post-LN and the pooling head are never loaded). The MetaMorph reduction follows:
 * grid x grid -> t x t bilinear (align_corners=False, t*t = n_tokens), then each token
 * L2-normalised: the 64 "visual tokens". Maths only; no threads or I/O besides loading. */
#ifndef MM_SIGLIP_H
#define MM_SIGLIP_H

#include <stdint.h>

#include "common/image.h"
#include "common/safetensors.h"
#include "kernels/backend.h"

typedef struct {
    int32_t hidden;       /* hidden_size */
    int32_t intermediate; /* intermediate_size */
    int32_t n_layers;     /* num_hidden_layers */
    int32_t n_heads;      /* num_attention_heads */
    int32_t head_dim;     /* hidden / n_heads */
    int32_t n_channels;   /* num_channels */
    int32_t image_size, patch_size;
    int32_t grid;         /* image_size / patch_size: grid x grid patches */
    float eps;            /* layer_norm_eps */
    int gelu_tanh;        /* hidden_act: gelu_pytorch_tanh (1) or gelu (0) */
} mm_siglip_config;

/* SiglipImageProcessor settings (preprocessor_config.json). */
typedef struct {
    int do_resize, do_rescale, do_normalize;
    int32_t width, height; /* size */
    int resample;          /* PIL numbering: 2 bilinear, 3 bicubic */
    double rescale_factor;
    float mean[3], std[3];
} mm_siglip_preproc;

typedef struct {
    mm_tensor layer_norm1_w, layer_norm1_b; /* [hidden] */
    mm_tensor q_proj_w, k_proj_w, v_proj_w; /* [hidden, hidden] */
    mm_tensor q_proj_b, k_proj_b, v_proj_b; /* [hidden] */
    mm_tensor out_proj_w, out_proj_b;       /* [hidden, hidden], [hidden] */
    mm_tensor layer_norm2_w, layer_norm2_b; /* [hidden] */
    mm_tensor fc1_w, fc1_b;                 /* [intermediate, hidden], [intermediate] */
    mm_tensor fc2_w, fc2_b;                 /* [hidden, intermediate], [hidden] */
} mm_siglip_layer;

typedef struct {
    mm_siglip_config cfg;
    mm_siglip_preproc pp;
    mm_backend *be;
    mm_safetensors *st;
    mm_tensor patch_embedding_w; /* [hidden, C*p*p]: the conv weight [hidden, C, p, p] as a matrix */
    mm_tensor patch_embedding_b; /* [hidden] */
    float *position_embedding;   /* [grid*grid, hidden] f32, backend memory */
    mm_siglip_layer *layers;     /* [n_layers] */
    int32_t run_layers;          /* layers encode runs: its features are hidden_states[run_layers] */
} mm_siglip;

/* dir: config.json, preprocessor_config.json (optional: SigLIP defaults at image_size),
 * model.safetensors or a sharded index. */
mm_status mm_siglip_load(const char *dir, mm_backend *be, mm_siglip **out);
void mm_siglip_free(mm_siglip *m);

/* SiglipImageProcessor on one decoded RGB image: PIL resize to pp->height x pp->width,
 * value * rescale_factor (in double, then f32), (v - mean) / std in f32.
 * pixels: [3, height, width] host memory. */
mm_status mm_siglip_preprocess(const mm_siglip_preproc *pp, const mm_image *img, float *pixels);

/* Which hidden state the features are: hidden_states[select_layer] of the HF model
 * (0: the embeddings, i: after layer i, negative: from the end, -1 the last layer,
 * which is the default after load). MetaMorph's mm_vision_select_layer. INVALID when
 * outside [-(n_layers + 1), n_layers]. */
mm_status mm_siglip_select_layer(mm_siglip *m, int32_t select_layer);

/* The vision tower on B preprocessed images pixels [B, 3, S, S] (host memory).
 * features [B, grid*grid, hidden] (host, may be NULL): the selected layer's output
 * (mm_siglip_select_layer), before the post-layernorm, as the reference takes it.
 * tokens [B, n_tokens, hidden] (host, may be NULL): bilinear to sqrt(n_tokens)^2 (skipped
 * when n_tokens == grid*grid, as the reference does), then L2-normalised. */
mm_status mm_siglip_encode(mm_siglip *m, const float *pixels, int64_t B, int32_t n_tokens, float *features,
                           float *tokens);

/* Image file bytes (PNG/JPEG, untrusted) -> tokens [n_tokens, hidden] (host): decode
 * within lim (NULL: defaults), preprocess, encode, reduce, L2-normalise. What every
 * mm-encoder runs for the encoder pool (and the tests run in process to check its
 * tokens bit for bit).
 * pixels: [3, S, S] host scratch, S = cfg.image_size. Bad images give FORMAT, INVALID
 * or UNSUPPORTED with a message saying why. */
mm_status mm_siglip_encode_image_bytes(mm_siglip *m, const void *data, size_t len, const mm_image_limits *lim,
                                       int32_t n_tokens, float *pixels, float *tokens);

#endif
