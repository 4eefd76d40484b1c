/* MetaMorph projector, vision head, image-aware prompts and generation (see
 * metamorph.h). The generation loop restates the reference greedy_decode's control
 * flow with the KV cache: one row per step, either a sampled token's embedding or, in
 * image mode, the projected prediction from the last final-norm hidden state. */
#include "metamorph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"

/* ---------------------------------------------------------------- loading */

/* "mlp{N}x_gelu" -> N, "linear" -> 1 */
static mm_status projector_depth(const char *file, const char *type, int *depth) {
    int n = 0;
    char tail[8] = "";
    if (!strcmp(type, "linear")) n = 1;
    else if (sscanf(type, "mlp%dx_gel%7s", &n, tail) != 2 || strcmp(tail, "u")) n = 0;
    if (n < 1 || n > 4)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: mm_projector_type '%s' (linear, mlp{1..4}x_gelu)", file, type);
    *depth = n;
    return MM_OK;
}

/* Loads prefix.weight (depth 1) or prefix.{0,2,4..}.weight/bias; width[0] and the last
 * width are checked when > 0, the middle ones taken from the tensors. */
static mm_status mlp_load(mm_metamorph *mm, const char *prefix, int depth, int64_t in, int64_t out,
                          mm_metamorph_mlp *mlp) {
    mm_backend *be = mm->llm->be;
    mlp->depth = depth;
    mlp->width[0] = in;
    for (int i = 0; i < depth; i++) {
        char wn[256], bn[256];
        if (depth == 1) snprintf(wn, sizeof wn, "%s.weight", prefix), snprintf(bn, sizeof bn, "%s.bias", prefix);
        else snprintf(wn, sizeof wn, "%s.%d.weight", prefix, 2 * i), snprintf(bn, sizeof bn, "%s.%d.bias", prefix, 2 * i);
        const mm_st_tensor *w, *b;
        int64_t shape[2] = {i == depth - 1 ? out : -1, mlp->width[i]};
        CHECK(mm_safetensors_get(mm->st, wn, 2, shape, &w));
        int64_t bshape[1] = {w->shape[0]};
        CHECK(mm_safetensors_get(mm->st, bn, 1, bshape, &b));
        CHECK(be->ops->weight_load(be, w, MM_WEIGHT_MATMUL, &mlp->w[i]));
        CHECK(be->ops->weight_load(be, b, MM_WEIGHT_VECTOR, &mlp->b[i]));
        mlp->width[i + 1] = w->shape[0];
    }
    return MM_OK;
}

static void mlp_release(mm_backend *be, mm_metamorph_mlp *mlp) {
    for (int i = 0; i < 4; i++) {
        if (mlp->w[i].data) be->ops->weight_release(be, &mlp->w[i]);
        if (mlp->b[i].data) be->ops->weight_release(be, &mlp->b[i]);
    }
}

static mm_status config_load(const char *dir, mm_metamorph_config *cfg, int *proj_depth, int *head_depth) {
    char file[4096];
    snprintf(file, sizeof file, "%s/config.json", dir);
    mm_json *root;
    CHECK(mm_json_load(file, &root));
    mm_status s;
    int64_t mm_hidden, n_tok;
    const char *ptype, *htype;
    /* required: a MetaMorph checkpoint always writes it */
    CHECK_GOTO(mm_json_int_in(root, file, "mm_hidden_size", -1, 1, 1 << 20, &mm_hidden), s, out);
    CHECK_GOTO(mm_json_int_in(root, file, "num_image_tokens", 64, 1, 4096, &n_tok), s, out);
    CHECK_GOTO(mm_json_bool(root, file, "normalize_vision", 1, &cfg->normalize_vision), s, out);
    CHECK_GOTO(mm_json_str(root, file, "mm_projector_type", "linear", &ptype), s, out);
    CHECK_GOTO(mm_json_str(root, file, "vision_head_type", "", &htype), s, out);
    int64_t select_layer;
    const char *select_feature;
    CHECK_GOTO(mm_json_int_in(root, file, "mm_vision_select_layer", -2, -1024, 1024, &select_layer), s, out);
    CHECK_GOTO(mm_json_str(root, file, "mm_vision_select_feature", "patch", &select_feature), s, out);
    /* SigLIP has no CLS token: the reference takes every feature for both values */
    if (strcmp(select_feature, "patch") && strcmp(select_feature, "cls_patch")) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: key 'mm_vision_select_feature' = \"%s\" (expected \"patch\" or \"cls_patch\")",
                     file, select_feature);
        goto out;
    }
    cfg->vision_select_layer = (int32_t)select_layer;
    cfg->mm_hidden = (int32_t)mm_hidden, cfg->n_image_tokens = (int32_t)n_tok;
    CHECK_GOTO(projector_depth(file, ptype, proj_depth), s, out);
    /* the reference's vision heads: "mlp" 2 Linears, "mlp2x_gelu" 3, else one Linear */
    *head_depth = !strcmp(htype, "mlp") ? 2 : !strcmp(htype, "mlp2x_gelu") ? 3 : 1;
out:
    mm_json_free(root);
    return s;
}

int mm_metamorph_is_checkpoint(const char *llm_dir) {
    char file[4096];
    snprintf(file, sizeof file, "%s/config.json", llm_dir);
    mm_json *root;
    if (mm_json_load(file, &root) != MM_OK) return 0;
    const char *type = NULL;
    int yes = mm_json_str(root, file, "model_type", "", &type) == MM_OK && !strcmp(type, "metamorph_llama");
    mm_json_free(root);
    mm_error_clear();
    return yes;
}

/* config.json's fields (+ the two MLP depths) and the tokenizer's image ids. */
static mm_status config_and_ids_load(const char *llm_dir, const mm_tokenizer *tok, mm_metamorph_config *cfg,
                                     int *proj_depth, int *head_depth) {
    CHECK(config_load(llm_dir, cfg, proj_depth, head_depth));
    cfg->image_start_id = mm_tokenizer_token_id(tok, "<image_start>");
    cfg->image_end_id = mm_tokenizer_token_id(tok, "<image_end>");
    if (cfg->image_start_id < 0 || cfg->image_end_id < 0)
        return MM_ERROR(MM_ERR_FORMAT, "%s: the tokenizer has no <image_start>/<image_end> tokens", llm_dir);
    return MM_OK;
}

mm_status mm_metamorph_config_load(const char *llm_dir, const mm_tokenizer *tok, mm_metamorph_config *cfg) {
    int proj_depth, head_depth;
    memset(cfg, 0, sizeof *cfg);
    return config_and_ids_load(llm_dir, tok, cfg, &proj_depth, &head_depth);
}

mm_status mm_metamorph_load(const char *llm_dir, mm_llama *llm, const mm_tokenizer *tok, mm_metamorph **out) {
    mm_metamorph *mm = calloc(1, sizeof *mm);
    CHECK(CHECK_ALLOC(mm));
    mm->llm = llm;
    mm_status s;
    int proj_depth = 0, head_depth = 0;
    CHECK_GOTO(config_and_ids_load(llm_dir, tok, &mm->cfg, &proj_depth, &head_depth), s, fail);
    CHECK_GOTO(mm_safetensors_open(llm_dir, &mm->st), s, fail);
    CHECK_GOTO(mlp_load(mm, "model.mm_projector", proj_depth, mm->cfg.mm_hidden, llm->cfg.dim, &mm->mm_projector), s, fail);
    CHECK_GOTO(mlp_load(mm, "vision_head", head_depth, llm->cfg.dim, mm->cfg.mm_hidden, &mm->vision_head), s, fail);
    *out = mm;
    return MM_OK;
fail:
    mm_metamorph_free(mm);
    return s;
}

void mm_metamorph_free(mm_metamorph *mm) {
    if (!mm) return;
    mlp_release(mm->llm->be, &mm->mm_projector);
    mlp_release(mm->llm->be, &mm->vision_head);
    mm_safetensors_close(mm->st);
    free(mm);
}

/* ---------------------------------------------------------------- heads */

/* y[M, width[depth]] = mlp(x[M, width[0]]) */
static mm_status mlp_forward(mm_backend *be, const mm_metamorph_mlp *mlp, const float *x, int64_t M, float *y) {
    int64_t widest = 0;
    for (int i = 1; i < mlp->depth; i++) widest = mlp->width[i] > widest ? mlp->width[i] : widest;
    float *t[2] = {NULL, NULL};
    mm_status s = MM_OK;
    if (mlp->depth > 1) {
        t[0] = be->ops->alloc(be, (size_t)(M * widest) * sizeof(float));
        t[1] = be->ops->alloc(be, (size_t)(M * widest) * sizeof(float));
        if (!t[0] || !t[1]) s = MM_ERROR(MM_ERR_NOMEM, "projector activations [%lld, %lld]", (long long)M, (long long)widest);
    }
    const float *in = x;
    for (int i = 0; s == MM_OK && i < mlp->depth; i++) {
        int last = i == mlp->depth - 1;
        float *o = last ? y : t[i % 2];
        s = be->ops->matmul(be, &mlp->w[i], in, o, M);
        if (s == MM_OK) s = be->ops->add_bias(be, o, mlp->b[i].data, M, mlp->width[i + 1]);
        if (s == MM_OK && !last) s = be->ops->gelu(be, o, M * mlp->width[i + 1], 0);
        in = o;
    }
    if (t[0]) be->ops->dealloc(be, t[0]);
    if (t[1]) be->ops->dealloc(be, t[1]);
    return s;
}

mm_status mm_metamorph_project(mm_metamorph *mm, const float *z, int64_t M, float *e) {
    return mlp_forward(mm->llm->be, &mm->mm_projector, z, M, e);
}

mm_status mm_metamorph_predict(mm_metamorph *mm, const float *h, int64_t M, float *z) {
    CHECK(mlp_forward(mm->llm->be, &mm->vision_head, h, M, z));
    if (mm->cfg.normalize_vision) CHECK(mm->llm->be->ops->l2norm(mm->llm->be, z, z, M, mm->cfg.mm_hidden, 1e-12f));
    return MM_OK;
}

/* ---------------------------------------------------------------- prompts */

mm_status mm_metamorph_render_content(const mm_content_part *parts, size_t n, char **out) {
    static const char pair[] = "<image_start><image><image_end>"; /* inference/demo.py's image_token_se */
    size_t len = 1;
    for (size_t i = 0; i < n; i++) len += parts[i].is_image ? sizeof pair : strlen(parts[i].text);
    char *c = malloc(len);
    CHECK(CHECK_ALLOC(c));
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *t = parts[i].is_image ? pair : parts[i].text;
        size_t k = strlen(t);
        memcpy(c + o, t, k), o += k;
        if (parts[i].is_image && (i + 1 == n || !parts[i + 1].is_image)) c[o++] = '\n'; /* end of a run */
    }
    c[o] = 0;
    *out = c;
    return MM_OK;
}

mm_status mm_metamorph_prompt_encode(const mm_tokenizer *tok, const mm_chat_message *msgs, size_t n_msgs,
                                     int generate_image, int32_t **ids, size_t *n_ids, int *n_images) {
    int32_t start_id = mm_tokenizer_token_id(tok, "<image_start>"), end_id = mm_tokenizer_token_id(tok, "<image_end>");
    if (generate_image && start_id < 0) return MM_ERROR(MM_ERR_UNSUPPORTED, "the tokenizer has no <image_start> token");
    /* as tokenizer_image_token: only the string "<image>" stands for an image (a plain
     * LLaMA has no image ids: nothing is marked there) */
    const char *marker = start_id >= 0 && end_id >= 0 ? "<image>" : NULL;
    int32_t *chat = NULL;
    size_t n = 0;
    CHECK(mm_chat_encode_marked(tok, msgs, n_msgs, 1, marker, MM_IMAGE_TOKEN_INDEX, &chat, &n, n_images));
    if (generate_image) {
        int32_t *g = realloc(chat, (n + 1) * sizeof *g);
        if (!g) {
            free(chat);
            return MM_ERROR(MM_ERR_NOMEM, "prompt ids");
        }
        chat = g, chat[n++] = start_id;
    }
    *ids = chat, *n_ids = n;
    return MM_OK;
}

mm_status mm_metamorph_prompt_encode_raw(const mm_tokenizer *tok, int32_t bos_id, const char *text, int32_t **ids,
                                         size_t *n_ids) {
    int32_t *body;
    size_t nb;
    CHECK(mm_tokenizer_encode(tok, text, strlen(text), 1, &body, &nb));
    int32_t bos = bos_id >= 0 ? bos_id : mm_tokenizer_bos_id(tok);
    size_t has_bos = bos >= 0;
    *ids = malloc((nb + has_bos) * sizeof **ids + 1);
    if (!*ids) {
        free(body);
        return MM_ERROR(MM_ERR_NOMEM, "prompt ids");
    }
    if (has_bos) (*ids)[0] = bos;
    if (nb) memcpy(*ids + has_bos, body, nb * sizeof *body);
    *n_ids = nb + has_bos;
    free(body);
    return MM_OK;
}

/* x[rows, dim] (backend) = the prompt's embeddings, each image placeholder expanded to
 * mm_projector(its n_image_tokens visual tokens). */
static mm_status prompt_embed(mm_metamorph *mm, const int32_t *prompt, size_t n, const float *images, int n_images,
                              float *x, float *zbuf) {
    mm_backend *be = mm->llm->be;
    int64_t dim = mm->llm->cfg.dim, T = mm->cfg.n_image_tokens, D = mm->cfg.mm_hidden;
    int64_t row = 0;
    int k = 0;
    for (size_t i = 0; i < n;) {
        if (prompt[i] == MM_IMAGE_TOKEN_INDEX) {
            if (k >= n_images) return MM_ERROR(MM_ERR_INVALID, "prompt has more image placeholders than the %d images", n_images);
            CHECK(be->ops->upload(be, zbuf, images + (size_t)k * T * D, (size_t)(T * D) * sizeof(float)));
            CHECK(mm_metamorph_project(mm, zbuf, T, x + row * dim));
            row += T, k++, i++;
            continue;
        }
        size_t j = i;
        while (j < n && prompt[j] != MM_IMAGE_TOKEN_INDEX) j++;
        CHECK(mm_llama_embed(mm->llm, prompt + i, (int64_t)(j - i), x + row * dim));
        row += (int64_t)(j - i), i = j;
    }
    if (k != n_images) return MM_ERROR(MM_ERR_INVALID, "%d images given, the prompt has %d placeholders", n_images, k);
    return MM_OK;
}

/* ---------------------------------------------------------------- generation */

static mm_status push_id(mm_metamorph_output *o, int32_t id, size_t *cap) {
    if (o->n_ids == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        int32_t *g = realloc(o->ids, nc * sizeof *g);
        CHECK(CHECK_ALLOC(g));
        o->ids = g, *cap = nc;
    }
    o->ids[o->n_ids++] = id;
    return MM_OK;
}

void mm_metamorph_output_free(mm_metamorph_output *o) {
    if (!o) return;
    free(o->ids);
    free(o->images);
    memset(o, 0, sizeof *o);
}

mm_status mm_metamorph_generate(mm_metamorph *mm, mm_kv_cache *kv, mm_llama_seq *seq, const int32_t *prompt,
                                size_t n_prompt, const float *images, int n_images, const mm_metamorph_gen *p,
                                mm_metamorph_output *out) {
    mm_llama *llm = mm->llm;
    mm_backend *be = llm->be;
    const mm_llama_config *c = &llm->cfg;
    int64_t dim = c->dim, T = mm->cfg.n_image_tokens, D = mm->cfg.mm_hidden;
    memset(out, 0, sizeof *out);
    if (seq->kv.n_tokens != 0) return MM_ERROR(MM_ERR_INVALID, "mm_metamorph_generate needs an empty sequence");
    if (n_images < 0 || (n_images && !images) || !p || !p->sampler || p->max_positions < 0)
        return MM_ERROR(MM_ERR_INVALID, "mm_metamorph_generate: bad arguments");
    int64_t rows = 0;
    int placeholders = 0;
    for (size_t i = 0; i < n_prompt; i++) {
        placeholders += prompt[i] == MM_IMAGE_TOKEN_INDEX;
        rows += prompt[i] == MM_IMAGE_TOKEN_INDEX ? T : 1;
    }
    if (rows == 0) return MM_ERROR(MM_ERR_INVALID, "empty prompt");
    if (rows >= c->max_pos) return MM_ERROR(MM_ERR_INVALID, "prompt has %lld rows, the context is %d", (long long)rows, c->max_pos);
    if (placeholders != n_images)
        return MM_ERROR(MM_ERR_INVALID, "%d images given, the prompt has %d placeholders", n_images, placeholders);
    float *x = be->ops->alloc(be, (size_t)(rows * dim) * sizeof(float));       /* [rows, dim] */
    float *zb = be->ops->alloc(be, (size_t)(T * D) * sizeof(float));          /* [T, D] */
    float *hb = be->ops->alloc(be, (size_t)dim * sizeof(float));                /* [dim] */
    float *h = malloc((size_t)dim * sizeof *h);                                 /* [dim] host */
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);             /* [vocab] host */
    size_t id_cap = 0;
    mm_status s = x && zb && hb && h && logits ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "generation buffers");
    mm_llama_seq *seqs[1] = {seq};
    int32_t count = (int32_t)rows;
    if (s == MM_OK) s = prompt_embed(mm, prompt, n_prompt, images, n_images, x, zb);
    if (s == MM_OK) s = mm_llama_eval_embeds(llm, kv, seqs, x, &count, 1, 0, h, logits);
    out->n_prompt = (int32_t)rows;
    /* a prompt that ends with <image_start> asks for an image */
    int in_image = n_prompt > 0 && prompt[n_prompt - 1] == mm->cfg.image_start_id;
    int32_t image_pos = 0;
    count = 1;
    while (s == MM_OK && out->n_positions < p->max_positions && seq->kv.n_tokens < c->max_pos) {
        if (in_image) {
            /* next visual token from the last hidden state; it is also the next input */
            if (image_pos == 0) {
                float *grown = realloc(out->images, (size_t)(out->n_images + 1) * T * D * sizeof(float));
                if (!grown) {
                    s = MM_ERROR(MM_ERR_NOMEM, "generated images");
                    break;
                }
                out->images = grown;
            }
            float *z_host = out->images + ((size_t)out->n_images * T + image_pos) * D;
            CHECK_GOTO(be->ops->upload(be, hb, h, (size_t)dim * sizeof(float)), s, done);
            CHECK_GOTO(mm_metamorph_predict(mm, hb, 1, zb), s, done);
            CHECK_GOTO(be->ops->download(be, z_host, zb, (size_t)D * sizeof(float)), s, done);
            CHECK_GOTO(mm_metamorph_project(mm, zb, 1, x), s, done);
            out->n_positions++;
            if (++image_pos == T) {
                in_image = 0, image_pos = 0;
                out->n_images++;
                if (p->on_image) p->on_image(p->ud, out->n_images - 1, out->images + (size_t)(out->n_images - 1) * T * D);
            }
            if (out->n_positions == p->max_positions) break;
            /* logits are needed only once the image is complete */
            CHECK_GOTO(mm_llama_eval_embeds(llm, kv, seqs, x, &count, 1, 0, h, in_image ? NULL : logits), s, done);
            continue;
        }
        int32_t id;
        CHECK_GOTO(mm_sampler_pick(p->sampler, be, logits, c->vocab_size, &id), s, done);
        out->n_positions++;
        CHECK_GOTO(push_id(out, id, &id_cap), s, done);
        if (p->on_token) p->on_token(p->ud, id);
        if (mm_llama_is_eos(c, id)) {
            out->stopped_eos = 1;
            break;
        }
        if (id == mm->cfg.image_start_id) in_image = 1, image_pos = 0;
        if (out->n_positions == p->max_positions) break;
        CHECK_GOTO(mm_llama_embed(llm, &id, 1, x), s, done);
        CHECK_GOTO(mm_llama_eval_embeds(llm, kv, seqs, x, &count, 1, 0, h, in_image ? NULL : logits), s, done);
    }
done:
    if (x) be->ops->dealloc(be, x);
    if (zb) be->ops->dealloc(be, zb);
    if (hb) be->ops->dealloc(be, hb);
    free(h);
    free(logits);
    if (s != MM_OK) mm_metamorph_output_free(out);
    return s;
}
