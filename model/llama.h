/* The LLaMA / MetaMorph-LLaMA decoder, loaded from an HF checkpoint directory
 * (config.json + safetensors, tied or untied embeddings, f32/f16/bf16, or linear
 * weights in the q8 format of common/q8.h). A process may
 * own any contiguous slice of half-layer blocks [block_begin, block_end) so that it can
 * be one pipeline stage (a stage boundary may fall between a layer's attention and its
 * MLP: the residual stream is all that crosses it, so the split is exact); the
 * embedding and the final norm + lm_head are separate calls that the first and last
 * stage make. Module and weight names mirror the checkpoint:
 * model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
 * post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head. */
#ifndef MM_LLAMA_H
#define MM_LLAMA_H

#include <stdint.h>

#include "common/safetensors.h"
#include "kernels/backend.h"
#include "kv_cache.h"

#define MM_LLAMA_MAX_EOS 8
/* The pipeline's unit of work: block 2l is layer l's self-attention (input_layernorm,
 * q/k/v/o_proj; it owns the layer's KV cache), block 2l + 1 its MLP
 * (post_attention_layernorm, gate/up/down_proj). */
#define MM_LLAMA_BLOCKS_PER_LAYER 2

typedef enum { MM_ROPE_DEFAULT = 0, MM_ROPE_LLAMA3, MM_ROPE_LINEAR } mm_rope_type;

typedef struct {
    int32_t dim;          /* hidden_size */
    int32_t n_layers;     /* num_hidden_layers */
    int32_t n_heads;      /* num_attention_heads */
    int32_t n_kv_heads;   /* num_key_value_heads */
    int32_t head_dim;
    int32_t hidden_dim;   /* intermediate_size */
    int32_t vocab_size;
    int32_t max_pos;      /* max_position_embeddings */
    float norm_eps;       /* rms_norm_eps */
    float rope_theta;
    mm_rope_type rope_type;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int32_t rope_original_max_pos;
    int tie_embeddings;
    int q8;                          /* quantization_config names the q8 format (common/q8.h) */
    int32_t bos_id;                  /* -1 if none */
    int32_t eos_ids[MM_LLAMA_MAX_EOS];
    int n_eos;
} mm_llama_config;

typedef struct {
    mm_tensor input_layernorm;          /* [dim] f32 */
    mm_tensor q_proj;                   /* [n_heads*head_dim, dim]; these seven and lm_head may be q8 (I8 + scales) */
    mm_tensor k_proj;                   /* [n_kv_heads*head_dim, dim] */
    mm_tensor v_proj;                   /* [n_kv_heads*head_dim, dim] */
    mm_tensor o_proj;                   /* [dim, n_heads*head_dim] */
    mm_tensor post_attention_layernorm; /* [dim] f32 */
    mm_tensor gate_proj;                /* [hidden_dim, dim] */
    mm_tensor up_proj;                  /* [hidden_dim, dim] */
    mm_tensor down_proj;                /* [dim, hidden_dim] */
} mm_llama_layer;

/* Scratch activations for up to cap rows, in backend memory. */
typedef struct {
    int64_t cap;
    float *xn;     /* [cap, dim] normed input */
    float *q;      /* [cap, n_heads*head_dim] */
    float *k, *v;  /* [cap, n_kv_heads*head_dim] */
    float *attn;   /* [cap, n_heads*head_dim] */
    float *gate;   /* [cap, hidden_dim] */
    float *up;     /* [cap, hidden_dim] */
    float *out;    /* [cap, dim] projection output before the residual add */
} mm_llama_scratch;

/* Buffers of mm_llama_eval, kept between calls (grow-only) so a decode step does not
 * allocate. Host arrays describe rows; x, sel and logits live in backend memory. */
typedef struct {
    int64_t rows_cap, outs_cap;
    int32_t *ids, *pos, *slots; /* [rows_cap] */
    mm_attn_row *attn;          /* [rows_cap] */
    int64_t *out_rows;          /* [outs_cap] */
    float *x;                   /* [rows_cap, dim] */
    float *sel;                 /* [outs_cap, dim] */
    float *logits;              /* [outs_cap, vocab] */
} mm_llama_eval_buffers;

typedef struct {
    mm_llama_config cfg;
    mm_backend *be;
    mm_safetensors *st;
    int32_t block_begin, block_end;   /* owned half-layer blocks */
    int32_t layer_begin, layer_end;   /* layers with at least one owned block */
    int32_t n_kv_layers;              /* layers whose attention is owned: the KV cache's layers */
    int has_embed, has_head;
    mm_tensor embed_tokens;           /* [vocab, dim] */
    mm_llama_layer *layers;           /* [layer_end - layer_begin]; a half not owned is not loaded */
    mm_tensor norm;                   /* [dim] f32 */
    mm_tensor lm_head;                /* [vocab, dim]; aliases embed_tokens when tied */
    float *inv_freq;                  /* [head_dim/2] host, rope frequencies after scaling */
    mm_llama_scratch scratch;
    mm_llama_eval_buffers eval;
    /* Called after each block of mm_llama_forward_layers (NULL: none); a non-OK status
     * ends the forward with it. A pipeline stage beats to the coordinator here, so that a
     * long step (a big prefill on a CPU) is not taken for a dead stage. */
    mm_status (*between_blocks)(void *user);
    void *between_blocks_user;
} mm_llama;

/* Parses dir/config.json. */
mm_status mm_llama_config_load(const char *dir, mm_llama_config *cfg);
/* RoPE inverse frequencies [head_dim/2] after the config's scaling, computed in f32 as
 * transformers does. */
void mm_llama_rope_inv_freq(const mm_llama_config *cfg, float *inv_freq);

enum { MM_LLAMA_EMBED = 1, MM_LLAMA_HEAD = 2 };
/* Loads layers [layer_begin, layer_end) (layer_end < 0: to the last), plus the embedding
 * and/or final norm + lm_head per parts (MM_LLAMA_EMBED | MM_LLAMA_HEAD). */
mm_status mm_llama_load(const char *dir, mm_backend *be, int32_t layer_begin, int32_t layer_end, int parts,
                        mm_llama **out);
/* The same for half-layer blocks [block_begin, block_end) (block_end < 0: to the last). */
mm_status mm_llama_load_blocks(const char *dir, mm_backend *be, int32_t block_begin, int32_t block_end, int parts,
                               mm_llama **out);
void mm_llama_free(mm_llama *m);

/* One row per token being computed in this step. */
typedef struct {
    int64_t n_rows;
    const int32_t *pos;       /* [n_rows] position of each token in its sequence */
    const int32_t *slots;     /* [n_rows] KV slot = block_id * block_size + pos % block_size */
    const mm_attn_row *attn;  /* [n_rows] block table and n_keys = pos + 1 */
} mm_llama_batch;

/* x[M, dim] = embed_tokens[ids] */
mm_status mm_llama_embed(mm_llama *m, const int32_t *ids, int64_t M, float *x);
/* Runs the owned blocks in place on x[n_rows, dim], storing K/V in kv (n_kv_layers layers). */
mm_status mm_llama_forward_layers(mm_llama *m, mm_kv_cache *kv, const mm_llama_batch *b, float *x);
/* normed[M, dim] = norm(x) (normed may alias x); logits[M, vocab] = lm_head(normed) if logits != NULL. */
mm_status mm_llama_head(mm_llama *m, const float *x, int64_t M, float *normed, float *logits);

/* ---- Whole-model convenience (a process owning every layer) ---- */

typedef struct {
    mm_kv_seq kv;
} mm_llama_seq;

/* Appends n_tokens[i] tokens to each of n_seqs sequences in one batched step (a prefill
 * chunk, a batched decode, or both mixed) and writes the logits of each sequence's last
 * new token to logits[n_seqs, vocab] (host memory). all_logits: instead write every new
 * token's logits, rows in order. */
mm_status mm_llama_eval(mm_llama *m, mm_kv_cache *kv, mm_llama_seq *const *seqs, const int32_t *const *tokens,
                        const int32_t *n_tokens, int n_seqs, int all_logits, float *logits);

/* The same step with the new rows' input embeddings given instead of token ids (the
 * image rows of MetaMorph: projected visual tokens). x [sum n_tokens, dim] in backend
 * memory, rows in sequence order. normed (host, may be NULL) gets the final-norm hidden
 * state of the output rows [n_out, dim] (what MetaMorph's vision_head reads); logits
 * (host, may be NULL) their logits [n_out, vocab]. n_out = n_seqs, or all rows. */
mm_status mm_llama_eval_embeds(mm_llama *m, mm_kv_cache *kv, mm_llama_seq *const *seqs, const float *x,
                               const int32_t *n_tokens, int n_seqs, int all_logits, float *normed, float *logits);

/* The KV cache dtype that matches the checkpoint: BF16 when its layer weights are bf16
 * (transformers keeps K/V in the model dtype), F32 otherwise. */
mm_dtype mm_llama_kv_dtype(const mm_llama *m);
/* The KV cache dtype a kv_dtype setting names: "auto" (mm_llama_kv_dtype: the model's
 * dtype, as transformers and vLLM's kv_cache_dtype "auto"; f16 checkpoints get f32, the
 * cache has no f16), "f32" or "bf16". INVALID for anything else. */
mm_status mm_llama_kv_dtype_parse(const mm_llama *m, const char *name, mm_dtype *out);

/* Is id one of the config's EOS ids? */
int mm_llama_is_eos(const mm_llama_config *cfg, int32_t id);

#endif
