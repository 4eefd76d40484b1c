/* MetaMorph's additions to the LLaMA (DESIGN section 1), loaded from the same
 * metamorph_llama checkpoint: model.mm_projector (visual token -> LLM embedding:
 * mlp{N}x_gelu = Linear, GELU, Linear, ... or one Linear) and vision_head (final-norm
 * hidden state -> visual token: "mlp" = Linear, GELU, Linear; "mlp2x_gelu" three
 * Linears; otherwise one Linear), and generation that switches to image mode on
 * <image_start>: for exactly n_image_tokens positions the next input is
 * mm_projector(L2norm(vision_head(h))) instead of a sampled token's embedding.
 * Unlike the reference greedy_decode it uses the KV cache; it must give the same
 * tokens and visual tokens (tests/golden/tiny/metamorph.jsonl). */
#ifndef MM_METAMORPH_H
#define MM_METAMORPH_H

#include <stddef.h>
#include <stdint.h>

#include "llama.h"
#include "sampler.h"
#include "tokenizer.h"

/* The reference's IMAGE_TOKEN_INDEX: one prompt id standing for an image's rows. */
#define MM_IMAGE_TOKEN_INDEX (-200)

typedef struct {
    int32_t mm_hidden;        /* mm_hidden_size: width of a visual token (1152 for so400m) */
    int32_t n_image_tokens;   /* num_image_tokens (64) */
    int normalize_vision;     /* L2-normalise predicted tokens (default 1, DESIGN section 1) */
    int32_t vision_select_layer; /* mm_vision_select_layer: the SigLIP hidden_states index the
                                  * visual tokens come from (default -2, as the reference) */
    int32_t image_start_id, image_end_id; /* from the tokenizer's added tokens */
} mm_metamorph_config;

/* An nn.Sequential of Linears with GELU (erf) between them, or a single nn.Linear. */
typedef struct {
    int depth;        /* number of Linears (1..4) */
    mm_tensor w[4];   /* [out_i, in_i] */
    mm_tensor b[4];   /* [out_i] f32 */
    int64_t width[5]; /* width[0] in, width[i+1] out of Linear i */
} mm_metamorph_mlp;

typedef struct {
    mm_metamorph_config cfg;
    mm_llama *llm;                 /* not owned; the whole model */
    mm_safetensors *st;
    mm_metamorph_mlp mm_projector; /* model.mm_projector: [mm_hidden] -> [dim] */
    mm_metamorph_mlp vision_head;  /* vision_head: [dim] -> [mm_hidden] */
} mm_metamorph;

/* Is llm_dir/config.json a MetaMorph LLaMA (model_type metamorph_llama)? */
int mm_metamorph_is_checkpoint(const char *llm_dir);
/* config.json's MetaMorph fields and the tokenizer's image ids, without the weights
 * (the coordinator needs n_image_tokens and the ids, not the projector). */
mm_status mm_metamorph_config_load(const char *llm_dir, const mm_tokenizer *tok, mm_metamorph_config *cfg);
/* llm_dir: the metamorph_llama checkpoint llm was loaded from. */
mm_status mm_metamorph_load(const char *llm_dir, mm_llama *llm, const mm_tokenizer *tok, mm_metamorph **out);
void mm_metamorph_free(mm_metamorph *mm);

/* e[M, dim] = mm_projector(z[M, mm_hidden]); backend memory. */
mm_status mm_metamorph_project(mm_metamorph *mm, const float *z, int64_t M, float *e);
/* z[M, mm_hidden] = L2norm(vision_head(h[M, dim])) (h: final-norm hidden states); backend memory. */
mm_status mm_metamorph_predict(mm_metamorph *mm, const float *h, int64_t M, float *z);

/* One part of a message's content: text, or an image (whose pixels travel apart). */
typedef struct {
    int is_image;
    const char *text; /* !is_image */
} mm_content_part;

/* A message's content as inference/demo.py lays it out: text parts as they are, each
 * run of image parts as one "<image_start><image><image_end>" per image followed by "\n"
 * (so images-then-text gives the demo's prompt). *out is malloc'd. */
mm_status mm_metamorph_render_content(const mm_content_part *parts, size_t n, char **out);

/* Prompt ids of a conversation whose contents were rendered by
 * mm_metamorph_render_content: the chat template with the assistant header, then
 * <image_start> when generate_image (a request for an image). As the reference's
 * tokenizer_image_token, each "<image>" in the text becomes one MM_IMAGE_TOKEN_INDEX
 * (*n_images of them) and only that string counts: "<image_start><image_end>" typed in
 * a text stays text. Only the tokenizer is needed. mm-run and the coordinator both
 * build prompts here, so the service sees exactly mm-run's ids. *ids is malloc'd. */
mm_status mm_metamorph_prompt_encode(const mm_tokenizer *tok, const mm_chat_message *msgs, size_t n_msgs,
                                     int generate_image, int32_t **ids, size_t *n_ids, int *n_images);

/* Prompt ids without the chat template: BOS (bos_id, or the tokenizer's when < 0;
 * none when neither has one) + the tokens of text. mm-run --raw and the service's raw
 * prompts (OpenAI /v1/completions) both build them here. *ids is malloc'd. */
mm_status mm_metamorph_prompt_encode_raw(const mm_tokenizer *tok, int32_t bos_id, const char *text, int32_t **ids,
                                         size_t *n_ids);

typedef struct {
    mm_sampler *sampler;     /* text tokens */
    int32_t max_positions;   /* generated positions at most (text tokens + visual tokens) */
    /* optional streaming callbacks (host memory) */
    void (*on_token)(void *ud, int32_t id);
    void (*on_image)(void *ud, int index, const float *tokens); /* [n_image_tokens, mm_hidden] */
    void *ud;
} mm_metamorph_gen;

typedef struct {
    int32_t *ids;        /* [n_ids] generated text ids, <image_start>/<image_end> included */
    size_t n_ids;
    float *images;       /* [n_images, n_image_tokens, mm_hidden] generated visual tokens */
    int n_images;
    int32_t n_positions; /* generated positions */
    int32_t n_prompt;    /* prompt rows, images expanded */
    int stopped_eos;     /* ended on an EOS id (else on max_positions or the context) */
} mm_metamorph_output;

/* Generates for one sequence. prompt: ids with one MM_IMAGE_TOKEN_INDEX per image;
 * images [n_images, n_image_tokens, mm_hidden] host (the encoder's visual tokens).
 * A prompt ending in <image_start> starts in image mode (a request for an image).
 * seq must be empty; its KV blocks stay reserved (the caller releases them). */
mm_status mm_metamorph_generate(mm_metamorph *mm, mm_kv_cache *kv, mm_llama_seq *seq, const int32_t *prompt,
                                size_t n_prompt, const float *images, int n_images, const mm_metamorph_gen *p,
                                mm_metamorph_output *out);
void mm_metamorph_output_free(mm_metamorph_output *o);

#endif
