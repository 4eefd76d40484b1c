/* Building blocks shared by the diffusers models (UNet2DConditionModel, AutoencoderKL
 * decoder): a stack-like activation arena, weight loading by diffusers' module names,
 * and the modules both networks use: ResnetBlock2D, Attention, Transformer2DModel with
 * its BasicTransformerBlock, Downsample2D and Upsample2D. Internal to model/.
 * Activations are backend memory, channels-last: a feature map is [B, H*W, C].
 * Maths only: no files beyond the safetensors handle, no threads.
 * Prefix mm_dn_ ("dn": diffusers): a module as diffusers defines it (mm_dn_resnet is a
 * ResnetBlock2D, mm_dn_transformer a Transformer2DModel), shared by unet.c, vae.c and
 * adapter.c; the networks themselves are mm_unet_, mm_vae_, mm_adapter_. */
#ifndef MM_DIFFUSION_BLOCKS_H
#define MM_DIFFUSION_BLOCKS_H

#include <stdint.h>

#include "common/safetensors.h"
#include "kernels/backend.h"

/* ---- config.json helpers (errors name the file and the key) ---- */
#include "common/config.h"
#define MM_DN_JSON_MAX_COUNT 65536 /* heads, layers per block: larger is a corrupt config */
/* An int, or a list of n ints (one per block), into out[n], each in [1, MM_DN_JSON_MAX_COUNT];
 * absent or null: def. */
mm_status mm_dn_json_int_or_list(const mm_json *root, const char *file, const char *key, int32_t n, int64_t def, int32_t *out);
/* A list of 1..cap strings (owned by the document). */
mm_status mm_dn_json_str_list(const mm_json *root, const char *file, const char *key, const char **out, int cap, int *n);
/* A feature the supported models do not use: the key must be absent or null / equal want. */
mm_status mm_dn_json_require_null(const mm_json *root, const char *file, const char *key);
mm_status mm_dn_json_require_str(const mm_json *root, const char *file, const char *key, const char *def, const char *want);
mm_status mm_dn_json_require_int(const mm_json *root, const char *file, const char *key, int64_t def, int64_t want);

/* ---- arena: LIFO scratch in backend memory, grown in chunks, reused across calls ---- */
#define MM_ARENA_MAX_CHUNKS 64

typedef struct {
    mm_backend *be;
    void *chunk[MM_ARENA_MAX_CHUNKS];
    size_t cap[MM_ARENA_MAX_CHUNKS];
    int n_chunks;
    int cur;      /* chunk being filled */
    size_t used;  /* bytes used in chunk cur */
} mm_arena;

typedef struct {
    int cur;
    size_t used;
} mm_arena_mark;

void mm_arena_init(mm_arena *a, mm_backend *be);
void mm_arena_free(mm_arena *a);
/* n floats (64-byte aligned); freed by mm_arena_release of an earlier mark or mm_arena_reset. */
mm_status mm_arena_floats(mm_arena *a, int64_t n, float **out);
static inline mm_arena_mark mm_arena_get_mark(const mm_arena *a) { return (mm_arena_mark){a->cur, a->used}; }
static inline void mm_arena_release(mm_arena *a, mm_arena_mark m) { a->cur = m.cur, a->used = m.used; }
static inline void mm_arena_reset(mm_arena *a) { a->cur = 0, a->used = 0; }

/* ---- weights ---- */
typedef struct {
    mm_backend *be;
    mm_safetensors *st;
    mm_tensor **owned; /* every loaded tensor, for release */
    int n_owned, cap_owned;
} mm_dn_loader;

typedef struct {
    mm_tensor w, b; /* w [out, in]; b [out] f32 or absent (data NULL) */
    int64_t in, out;
} mm_dn_linear;

typedef struct {
    mm_tensor w, b; /* w [out, in, k, k]; b [out] */
    int64_t in, out, k;
} mm_dn_conv;

typedef struct {
    mm_tensor w, b; /* [C] f32 */
} mm_dn_norm;

mm_status mm_dn_load_linear(mm_dn_loader *L, const char *name, int64_t in, int64_t out, int bias, mm_dn_linear *m);
mm_status mm_dn_load_conv(mm_dn_loader *L, const char *name, int64_t in, int64_t out, int64_t k, mm_dn_conv *m);
mm_status mm_dn_load_norm(mm_dn_loader *L, const char *name, int64_t C, mm_dn_norm *m);
void mm_dn_loader_release(mm_dn_loader *L);

/* y[M, out] = x[M, in] W^T + b */
mm_status mm_dn_linear_forward(mm_backend *be, const mm_dn_linear *m, const float *x, float *y, int64_t M);
/* y[B, Ho, Wo, out] = conv(x[B, H, W, in]) + b */
mm_status mm_dn_conv_forward(mm_backend *be, const mm_dn_conv *m, const float *x, float *y, int64_t B, int64_t H,
                             int64_t W, int32_t stride, int32_t pad);

/* ---- ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1) ---- */
typedef struct {
    int64_t in, out;
    int32_t groups;
    float eps;
    mm_dn_norm norm1, norm2;
    mm_dn_conv conv1, conv2;
    mm_dn_linear time_emb_proj; /* absent (w.data NULL) in the VAE */
    mm_dn_conv conv_shortcut;   /* 1x1, present when in != out */
} mm_dn_resnet;

/* prefix: e.g. "down_blocks.0.resnets.1"; temb_dim 0: no time embedding. */
mm_status mm_dn_resnet_load(mm_dn_loader *L, const char *prefix, int64_t in, int64_t out, int64_t temb_dim,
                            int32_t groups, float eps, mm_dn_resnet *r);
/* out[B, HW, r->out] = resnet(x[B, HW, r->in]); temb_act [B, temb_dim] = silu(temb) or NULL. */
mm_status mm_dn_resnet_forward(mm_arena *a, const mm_dn_resnet *r, const float *x, const float *temb_act, int64_t B,
                               int64_t H, int64_t W, float *out);

/* ---- Attention (diffusers models/attention_processor.py Attention) ---- */
typedef struct {
    int32_t heads, head_dim;
    int64_t query_dim, ctx_dim, inner;
    mm_dn_linear to_q, to_k, to_v, to_out; /* to_out = to_out.0 */
} mm_dn_attention;

mm_status mm_dn_attention_load(mm_dn_loader *L, const char *prefix, int64_t query_dim, int64_t ctx_dim, int32_t heads,
                               int32_t head_dim, int qkv_bias, mm_dn_attention *m);
/* out[B, Tq, query_dim] = attention(x[B, Tq, query_dim], ctx[B, Tk, ctx_dim]); ctx NULL: self. */
mm_status mm_dn_attention_forward(mm_arena *a, const mm_dn_attention *m, const float *x, const float *ctx, int64_t B,
                                  int64_t Tq, int64_t Tk, float *out);

/* ---- Transformer2DModel (continuous input) with BasicTransformerBlocks ---- */
typedef struct {
    mm_dn_norm norm1, norm2, norm3; /* LayerNorm, eps 1e-5 */
    mm_dn_attention attn1, attn2;
    mm_dn_linear ff_proj, ff_out;   /* ff.net.0.proj (GEGLU, 2 x ff_inner), ff.net.2 */
    int64_t ff_inner;
} mm_dn_basic_block;

typedef struct {
    int64_t channels, inner;
    int32_t groups, n_layers;
    int use_linear_projection;
    mm_dn_norm norm;                     /* GroupNorm, eps 1e-6 */
    mm_dn_conv proj_in_conv, proj_out_conv; /* 1x1 when !use_linear_projection */
    mm_dn_linear proj_in_lin, proj_out_lin; /* when use_linear_projection */
    mm_dn_basic_block *blocks;           /* [n_layers] */
} mm_dn_transformer;

mm_status mm_dn_transformer_load(mm_dn_loader *L, const char *prefix, int64_t channels, int32_t heads, int32_t n_layers,
                                 int64_t cross_dim, int32_t groups, int use_linear_projection, mm_dn_transformer *t);
void mm_dn_transformer_free(mm_dn_transformer *t);
/* out[B, HW, C] = transformer(x[B, HW, C], ctx[B, T, cross_dim]) (out must not alias x) */
mm_status mm_dn_transformer_forward(mm_arena *a, const mm_dn_transformer *t, const float *x, const float *ctx, int64_t B,
                                    int64_t HW, int64_t T, float *out);

#endif
