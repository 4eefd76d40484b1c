/* LLaMA decoder: config parsing, weight loading for a slice of layers, and the forward
 * pass over a batch of rows from many sequences (see llama.h). Maths only: it calls
 * backend ops and never touches threads, sockets or MPI. */
#include "llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"

/* ---------------------------------------------------------------- config */

static mm_status config_rope_scaling(const mm_json *root, const char *file, mm_llama_config *c) {
    const mm_json *rs = mm_json_get(root, "rope_scaling");
    c->rope_type = MM_ROPE_DEFAULT;
    if (!rs || !mm_json_get(rs, "factor")) return MM_OK; /* null or absent */
    const char *type = NULL;
    CHECK(mm_json_str(rs, file, "rope_type", NULL, &type));
    if (!type) CHECK(mm_json_str(rs, file, "type", "default", &type));
    double factor, lo, hi;
    int64_t orig;
    CHECK(mm_json_num(rs, file, "factor", 1.0, &factor));
    CHECK(mm_json_num(rs, file, "low_freq_factor", 1.0, &lo));
    CHECK(mm_json_num(rs, file, "high_freq_factor", 4.0, &hi));
    CHECK(mm_json_int(rs, file, "original_max_position_embeddings", 8192, &orig));
    c->rope_factor = (float)factor, c->rope_low_freq_factor = (float)lo, c->rope_high_freq_factor = (float)hi;
    c->rope_original_max_pos = (int32_t)orig;
    if (!strcmp(type, "llama3")) {
        c->rope_type = MM_ROPE_LLAMA3;
        if (!(hi > lo) || !(factor > 0) || orig <= 0)
            return MM_ERROR(MM_ERR_FORMAT, "%s: rope_scaling llama3 needs high_freq_factor > low_freq_factor, factor > 0", file);
    } else if (!strcmp(type, "linear")) {
        c->rope_type = MM_ROPE_LINEAR;
    } else if (strcmp(type, "default") != 0) {
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: rope_scaling type '%s' is not supported (llama3, linear, default)", file, type);
    }
    return MM_OK;
}

mm_status mm_llama_config_load(const char *dir, mm_llama_config *c) {
    char file[4096];
    snprintf(file, sizeof file, "%s/config.json", dir);
    mm_json *root;
    CHECK(mm_json_load(file, &root));
    mm_status s = MM_OK;
    memset(c, 0, sizeof *c);
    int64_t dim, layers, heads, kv_heads, head_dim, hidden, vocab, max_pos, bos;
    double eps, theta;
    int tie, attn_bias, mlp_bias;
    const char *model_type, *act;
    CHECK_GOTO(mm_json_str(root, file, "model_type", "llama", &model_type), s, out);
    if (strcmp(model_type, "llama") && strcmp(model_type, "metamorph_llama")) {
        s = MM_ERROR(MM_ERR_UNSUPPORTED, "%s: model_type '%s' is not a LLaMA (llama, metamorph_llama)", file, model_type);
        goto out;
    }
    CHECK_GOTO(mm_json_int(root, file, "hidden_size", -1, &dim), s, out);
    CHECK_GOTO(mm_json_int(root, file, "num_hidden_layers", -1, &layers), s, out);
    CHECK_GOTO(mm_json_int(root, file, "num_attention_heads", -1, &heads), s, out);
    CHECK_GOTO(mm_json_int(root, file, "num_key_value_heads", heads, &kv_heads), s, out);
    CHECK_GOTO(mm_json_int(root, file, "intermediate_size", -1, &hidden), s, out);
    CHECK_GOTO(mm_json_int(root, file, "vocab_size", -1, &vocab), s, out);
    CHECK_GOTO(mm_json_int(root, file, "max_position_embeddings", 2048, &max_pos), s, out);
    CHECK_GOTO(mm_json_num(root, file, "rms_norm_eps", 1e-6, &eps), s, out);
    CHECK_GOTO(mm_json_num(root, file, "rope_theta", 10000.0, &theta), s, out);
    CHECK_GOTO(mm_json_bool(root, file, "tie_word_embeddings", 0, &tie), s, out);
    CHECK_GOTO(mm_json_bool(root, file, "attention_bias", 0, &attn_bias), s, out);
    CHECK_GOTO(mm_json_bool(root, file, "mlp_bias", 0, &mlp_bias), s, out);
    CHECK_GOTO(mm_json_str(root, file, "hidden_act", "silu", &act), s, out);
    CHECK_GOTO(mm_json_int(root, file, "bos_token_id", -1, &bos), s, out);
    if (dim <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || hidden <= 0 || vocab <= 0 || max_pos <= 0) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, "
                     "intermediate_size, vocab_size and max_position_embeddings must be positive", file);
        goto out;
    }
    const mm_json *hd_json = mm_json_get(root, "head_dim");
    CHECK_GOTO(mm_json_int(root, file, "head_dim", dim / heads, &head_dim), s, out);
    if (!hd_json && dim % heads) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: hidden_size %lld not divisible by num_attention_heads %lld", file,
                     (long long)dim, (long long)heads);
        goto out;
    }
    if (heads % kv_heads || head_dim <= 0 || head_dim % 2) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: num_attention_heads %lld must be a multiple of num_key_value_heads %lld "
                     "and head_dim %lld even", file, (long long)heads, (long long)kv_heads, (long long)head_dim);
        goto out;
    }
    if (attn_bias || mlp_bias || strcmp(act, "silu")) {
        s = MM_ERROR(MM_ERR_UNSUPPORTED, "%s: attention_bias/mlp_bias true or hidden_act '%s' is not supported", file, act);
        goto out;
    }
    c->dim = (int32_t)dim, c->n_layers = (int32_t)layers, c->n_heads = (int32_t)heads;
    c->n_kv_heads = (int32_t)kv_heads, c->head_dim = (int32_t)head_dim, c->hidden_dim = (int32_t)hidden;
    c->vocab_size = (int32_t)vocab, c->max_pos = (int32_t)max_pos, c->norm_eps = (float)eps;
    c->rope_theta = (float)theta, c->tie_embeddings = tie, c->bos_id = (int32_t)bos;
    CHECK_GOTO(config_rope_scaling(root, file, c), s, out);
    int64_t eos[MM_LLAMA_MAX_EOS];
    CHECK_GOTO(mm_json_int_list(root, file, "eos_token_id", eos, MM_LLAMA_MAX_EOS, &c->n_eos), s, out);
    for (int i = 0; i < c->n_eos; i++) c->eos_ids[i] = (int32_t)eos[i];
out:
    mm_json_free(root);
    return s;
}

/* transformers' default + llama3 rope init, in f32 like torch (see
 * _compute_default_rope_parameters / _compute_llama3_parameters). */
void mm_llama_rope_inv_freq(const mm_llama_config *c, float *inv_freq) {
    int32_t half = c->head_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)c->head_dim;
        float f = 1.0f / powf(c->rope_theta, expo);
        if (c->rope_type == MM_ROPE_LINEAR) {
            f = f / c->rope_factor;
        } else if (c->rope_type == MM_ROPE_LLAMA3) {
            float old = (float)c->rope_original_max_pos;
            float low_wavelen = old / c->rope_low_freq_factor;
            float high_wavelen = old / c->rope_high_freq_factor;
            float wavelen = 2.0f * (float)M_PI / f;
            if (wavelen > low_wavelen) {
                f = f / c->rope_factor;
            } else if (!(wavelen < high_wavelen)) { /* medium band: interpolate */
                float smooth = (old / wavelen - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0f - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

mm_dtype mm_llama_kv_dtype(const mm_llama *m) {
    if (m->layer_end > m->layer_begin) return m->layers[0].k_proj.dtype == MM_DTYPE_BF16 ? MM_DTYPE_BF16 : MM_DTYPE_F32;
    return MM_DTYPE_F32;
}

int mm_llama_is_eos(const mm_llama_config *cfg, int32_t id) {
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_ids[i] == id) return 1;
    return 0;
}

/* ---------------------------------------------------------------- weights */

static mm_status load_weight(mm_llama *m, const char *name, int64_t rows, int64_t cols, mm_weight_use use,
                             mm_tensor *out) {
    const mm_st_tensor *t;
    int64_t shape[2] = {rows, cols};
    CHECK(mm_safetensors_get(m->st, name, use == MM_WEIGHT_VECTOR ? 1 : 2, shape, &t));
    return m->be->ops->weight_load(m->be, t, use, out);
}

static mm_status load_layer(mm_llama *m, int32_t l, mm_llama_layer *L) {
    const mm_llama_config *c = &m->cfg;
    int64_t q_out = (int64_t)c->n_heads * c->head_dim, kv_out = (int64_t)c->n_kv_heads * c->head_dim;
    char name[256];
#define W(field, path, rows, cols, use)                                                            \
    snprintf(name, sizeof name, "model.layers.%d." path, l);                                       \
    CHECK(load_weight(m, name, rows, cols, use, &L->field))
    W(input_layernorm, "input_layernorm.weight", c->dim, 0, MM_WEIGHT_VECTOR);
    W(q_proj, "self_attn.q_proj.weight", q_out, c->dim, MM_WEIGHT_MATMUL);
    W(k_proj, "self_attn.k_proj.weight", kv_out, c->dim, MM_WEIGHT_MATMUL);
    W(v_proj, "self_attn.v_proj.weight", kv_out, c->dim, MM_WEIGHT_MATMUL);
    W(o_proj, "self_attn.o_proj.weight", c->dim, q_out, MM_WEIGHT_MATMUL);
    W(post_attention_layernorm, "post_attention_layernorm.weight", c->dim, 0, MM_WEIGHT_VECTOR);
    W(gate_proj, "mlp.gate_proj.weight", c->hidden_dim, c->dim, MM_WEIGHT_MATMUL);
    W(up_proj, "mlp.up_proj.weight", c->hidden_dim, c->dim, MM_WEIGHT_MATMUL);
    W(down_proj, "mlp.down_proj.weight", c->dim, c->hidden_dim, MM_WEIGHT_MATMUL);
#undef W
    return MM_OK;
}

static void release_layer(mm_backend *be, mm_llama_layer *L) {
    mm_tensor *all[] = {&L->input_layernorm, &L->q_proj, &L->k_proj, &L->v_proj, &L->o_proj,
                        &L->post_attention_layernorm, &L->gate_proj, &L->up_proj, &L->down_proj};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i]->data) be->ops->weight_release(be, all[i]);
}

static void eval_buffers_free(mm_llama *m);

static void scratch_free(mm_llama *m) {
    mm_llama_scratch *s = &m->scratch;
    float *all[] = {s->xn, s->q, s->k, s->v, s->attn, s->gate, s->up, s->out};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) m->be->ops->dealloc(m->be, all[i]);
    memset(s, 0, sizeof *s);
}

static mm_status scratch_reserve(mm_llama *m, int64_t rows) {
    mm_llama_scratch *s = &m->scratch;
    if (rows <= s->cap) return MM_OK;
    scratch_free(m);
    const mm_llama_config *c = &m->cfg;
    size_t r = (size_t)rows * sizeof(float);
    size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    s->xn = m->be->ops->alloc(m->be, r * c->dim);
    s->q = m->be->ops->alloc(m->be, r * q);
    s->k = m->be->ops->alloc(m->be, r * kv);
    s->v = m->be->ops->alloc(m->be, r * kv);
    s->attn = m->be->ops->alloc(m->be, r * q);
    s->gate = m->be->ops->alloc(m->be, r * c->hidden_dim);
    s->up = m->be->ops->alloc(m->be, r * c->hidden_dim);
    s->out = m->be->ops->alloc(m->be, r * c->dim);
    if (!s->xn || !s->q || !s->k || !s->v || !s->attn || !s->gate || !s->up || !s->out) {
        scratch_free(m);
        return MM_ERROR(MM_ERR_NOMEM, "LLaMA scratch for %lld rows", (long long)rows);
    }
    s->cap = rows;
    return MM_OK;
}

mm_status mm_llama_load(const char *dir, mm_backend *be, int32_t layer_begin, int32_t layer_end, int parts,
                        mm_llama **out) {
    mm_llama *m = calloc(1, sizeof *m);
    CHECK(CHECK_ALLOC(m));
    m->be = be;
    mm_status s;
    CHECK_GOTO(mm_llama_config_load(dir, &m->cfg), s, fail);
    const mm_llama_config *c = &m->cfg;
    if (layer_end < 0) layer_end = c->n_layers;
    if (layer_begin < 0 || layer_begin > layer_end || layer_end > c->n_layers) {
        s = MM_ERROR(MM_ERR_INVALID, "%s: layer range [%d, %d) outside [0, %d)", dir, layer_begin, layer_end, c->n_layers);
        goto fail;
    }
    m->layer_begin = layer_begin, m->layer_end = layer_end;
    m->has_embed = !!(parts & MM_LLAMA_EMBED), m->has_head = !!(parts & MM_LLAMA_HEAD);
    CHECK_GOTO(mm_safetensors_open(dir, &m->st), s, fail);
    if (m->has_embed)
        CHECK_GOTO(load_weight(m, "model.embed_tokens.weight", c->vocab_size, c->dim, MM_WEIGHT_TABLE, &m->embed_tokens),
                   s, fail);
    int32_t n = layer_end - layer_begin;
    m->layers = calloc((size_t)(n ? n : 1), sizeof *m->layers);
    CHECK_GOTO(CHECK_ALLOC(m->layers), s, fail);
    for (int32_t l = 0; l < n; l++) CHECK_GOTO(load_layer(m, layer_begin + l, &m->layers[l]), s, fail);
    if (m->has_head) {
        CHECK_GOTO(load_weight(m, "model.norm.weight", c->dim, 0, MM_WEIGHT_VECTOR, &m->norm), s, fail);
        /* tied: the same checkpoint tensor, loaded a second time for its matmul use */
        const char *head = c->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
        CHECK_GOTO(load_weight(m, head, c->vocab_size, c->dim, MM_WEIGHT_MATMUL, &m->lm_head), s, fail);
    }
    m->inv_freq = malloc((size_t)(c->head_dim / 2) * sizeof(float));
    CHECK_GOTO(CHECK_ALLOC(m->inv_freq), s, fail);
    mm_llama_rope_inv_freq(c, m->inv_freq);
    *out = m;
    return MM_OK;
fail:
    mm_llama_free(m);
    return s;
}

void mm_llama_free(mm_llama *m) {
    if (!m) return;
    if (m->layers)
        for (int32_t l = 0; l < m->layer_end - m->layer_begin; l++) release_layer(m->be, &m->layers[l]);
    free(m->layers);
    if (m->embed_tokens.data) m->be->ops->weight_release(m->be, &m->embed_tokens);
    if (m->norm.data) m->be->ops->weight_release(m->be, &m->norm);
    if (m->lm_head.data) m->be->ops->weight_release(m->be, &m->lm_head);
    scratch_free(m);
    eval_buffers_free(m);
    free(m->inv_freq);
    mm_safetensors_close(m->st);
    free(m);
}

/* ---------------------------------------------------------------- forward */

mm_status mm_llama_embed(mm_llama *m, const int32_t *ids, int64_t M, float *x) {
    if (!m->embed_tokens.data) return MM_ERROR(MM_ERR_INVALID, "this LLaMA part has no embedding");
    return m->be->ops->embed(m->be, &m->embed_tokens, ids, M, x);
}

static mm_status forward_layer(mm_llama *m, const mm_llama_layer *L, mm_kv_cache *kv, int32_t kv_layer,
                               const mm_llama_batch *b, float *x) {
    mm_backend *be = m->be;
    const mm_backend_ops *op = be->ops;
    const mm_llama_config *c = &m->cfg;
    mm_llama_scratch *s = &m->scratch;
    int64_t M = b->n_rows;
    /* attention block */
    CHECK(op->rmsnorm(be, x, L->input_layernorm.data, s->xn, M, c->dim, c->norm_eps));
    CHECK(op->matmul(be, &L->q_proj, s->xn, s->q, M));
    CHECK(op->matmul(be, &L->k_proj, s->xn, s->k, M));
    CHECK(op->matmul(be, &L->v_proj, s->xn, s->v, M));
    CHECK(op->rope(be, s->q, b->pos, m->inv_freq, M, c->n_heads, c->head_dim));
    CHECK(op->rope(be, s->k, b->pos, m->inv_freq, M, c->n_kv_heads, c->head_dim));
    mm_attn_shape shape = {c->n_heads, c->n_kv_heads, c->head_dim, kv->block_size, 1.0f / sqrtf((float)c->head_dim),
                           kv->dtype};
    CHECK(op->kv_store(be, kv->k[kv_layer], kv->v[kv_layer], s->k, s->v, b->slots, M, &shape));
    CHECK(op->attention(be, s->q, kv->k[kv_layer], kv->v[kv_layer], b->attn, M, &shape, s->attn));
    CHECK(op->matmul(be, &L->o_proj, s->attn, s->out, M));
    CHECK(op->add(be, x, s->out, M * c->dim));
    /* MLP block */
    CHECK(op->rmsnorm(be, x, L->post_attention_layernorm.data, s->xn, M, c->dim, c->norm_eps));
    CHECK(op->matmul(be, &L->gate_proj, s->xn, s->gate, M));
    CHECK(op->matmul(be, &L->up_proj, s->xn, s->up, M));
    CHECK(op->silu_mul(be, s->gate, s->up, M * c->hidden_dim));
    CHECK(op->matmul(be, &L->down_proj, s->gate, s->out, M));
    CHECK(op->add(be, x, s->out, M * c->dim));
    return MM_OK;
}

mm_status mm_llama_forward_layers(mm_llama *m, mm_kv_cache *kv, const mm_llama_batch *b, float *x) {
    int32_t n = m->layer_end - m->layer_begin;
    if (kv->n_layers != n || kv->n_kv_heads != m->cfg.n_kv_heads || kv->head_dim != m->cfg.head_dim)
        return MM_ERROR(MM_ERR_INVALID, "KV cache geometry (%d layers, %d kv heads x %d) does not match the model slice "
                        "(%d layers, %d x %d)", kv->n_layers, kv->n_kv_heads, kv->head_dim, n, m->cfg.n_kv_heads, m->cfg.head_dim);
    for (int64_t r = 0; r < b->n_rows; r++)
        if (b->pos[r] < 0 || b->pos[r] >= m->cfg.max_pos)
            return MM_ERROR(MM_ERR_INVALID, "position %d outside the context [0, %d)", b->pos[r], m->cfg.max_pos);
    CHECK(scratch_reserve(m, b->n_rows));
    for (int32_t l = 0; l < n; l++) CHECK(forward_layer(m, &m->layers[l], kv, l, b, x));
    return MM_OK;
}

mm_status mm_llama_head(mm_llama *m, const float *x, int64_t M, float *normed, float *logits) {
    if (!m->has_head) return MM_ERROR(MM_ERR_INVALID, "this LLaMA part has no final norm / lm_head");
    CHECK(m->be->ops->rmsnorm(m->be, x, m->norm.data, normed, M, m->cfg.dim, m->cfg.norm_eps));
    if (logits) CHECK(m->be->ops->matmul(m->be, &m->lm_head, normed, logits, M));
    return MM_OK;
}

/* ---------------------------------------------------------------- whole model */

static void eval_buffers_free(mm_llama *m) {
    mm_llama_eval_buffers *e = &m->eval;
    free(e->ids), free(e->pos), free(e->slots), free(e->attn), free(e->out_rows);
    m->be->ops->dealloc(m->be, e->x), m->be->ops->dealloc(m->be, e->sel), m->be->ops->dealloc(m->be, e->logits);
    memset(e, 0, sizeof *e);
}

static mm_status eval_buffers_reserve(mm_llama *m, int64_t rows, int64_t outs) {
    mm_llama_eval_buffers *e = &m->eval;
    if (rows <= e->rows_cap && outs <= e->outs_cap) return MM_OK;
    rows = rows > e->rows_cap ? rows : e->rows_cap;
    outs = outs > e->outs_cap ? outs : e->outs_cap;
    eval_buffers_free(m);
    mm_backend *be = m->be;
    size_t r = (size_t)rows, o = (size_t)outs, dim = (size_t)m->cfg.dim;
    e->ids = malloc(r * sizeof *e->ids), e->pos = malloc(r * sizeof *e->pos), e->slots = malloc(r * sizeof *e->slots);
    e->attn = malloc(r * sizeof *e->attn), e->out_rows = malloc(o * sizeof *e->out_rows);
    e->x = be->ops->alloc(be, r * dim * sizeof(float));
    e->sel = be->ops->alloc(be, o * dim * sizeof(float));
    e->logits = be->ops->alloc(be, o * (size_t)m->cfg.vocab_size * sizeof(float));
    if (!e->ids || !e->pos || !e->slots || !e->attn || !e->out_rows || !e->x || !e->sel || !e->logits) {
        eval_buffers_free(m);
        return MM_ERROR(MM_ERR_NOMEM, "mm_llama_eval buffers for %lld rows", (long long)rows);
    }
    e->rows_cap = rows, e->outs_cap = outs;
    return MM_OK;
}

/* One batched step of whole-model evaluation, shared by mm_llama_eval (rows given as
 * token ids) and mm_llama_eval_embeds (rows given as input embeddings): exactly one of
 * tokens / embeds is non-NULL. normed and logits (host) may each be NULL. */
static mm_status eval_step(mm_llama *m, mm_kv_cache *kv, mm_llama_seq *const *seqs, const int32_t *const *tokens,
                           const float *embeds, const int32_t *n_tokens, int n_seqs, int all_logits, float *normed,
                           float *logits) {
    if (!m->has_embed || !m->has_head || m->layer_begin != 0 || m->layer_end != m->cfg.n_layers)
        return MM_ERROR(MM_ERR_INVALID, "mm_llama_eval needs the whole model");
    mm_backend *be = m->be;
    const mm_llama_config *c = &m->cfg;
    int64_t M = 0;
    for (int i = 0; i < n_seqs; i++) {
        if (n_tokens[i] <= 0) return MM_ERROR(MM_ERR_INVALID, "sequence %d has no new tokens", i);
        int32_t end = seqs[i]->kv.n_tokens + n_tokens[i];
        if (end > c->max_pos) return MM_ERROR(MM_ERR_INVALID, "sequence %d would reach %d tokens, context is %d", i, end, c->max_pos);
        CHECK(mm_kv_seq_reserve(kv, &seqs[i]->kv, end));
        M += n_tokens[i];
    }
    int64_t n_out = all_logits ? M : n_seqs;
    CHECK(eval_buffers_reserve(m, M, n_out));
    mm_llama_eval_buffers *e = &m->eval;
    int64_t r = 0, o = 0;
    for (int i = 0; i < n_seqs; i++) {
        mm_kv_seq *q = &seqs[i]->kv;
        for (int32_t t = 0; t < n_tokens[i]; t++, r++) {
            int32_t p = q->n_tokens + t;
            if (tokens) e->ids[r] = tokens[i][t];
            e->pos[r] = p;
            e->slots[r] = q->blocks[p / kv->block_size] * kv->block_size + p % kv->block_size;
            e->attn[r] = (mm_attn_row){q->blocks, p + 1};
            if (all_logits || t == n_tokens[i] - 1) e->out_rows[o++] = r;
        }
    }
    mm_llama_batch b = {M, e->pos, e->slots, e->attn};
    if (tokens) CHECK(mm_llama_embed(m, e->ids, M, e->x));
    else CHECK(be->ops->copy(be, e->x, embeds, (size_t)M * c->dim * sizeof(float)));
    CHECK(mm_llama_forward_layers(m, kv, &b, e->x));
    for (int64_t i = 0; i < n_out; i++)
        CHECK(be->ops->copy(be, e->sel + i * c->dim, e->x + e->out_rows[i] * c->dim, (size_t)c->dim * sizeof(float)));
    CHECK(mm_llama_head(m, e->sel, n_out, e->sel, logits ? e->logits : NULL));
    if (normed) CHECK(be->ops->download(be, normed, e->sel, (size_t)n_out * c->dim * sizeof(float)));
    if (logits) CHECK(be->ops->download(be, logits, e->logits, (size_t)n_out * c->vocab_size * sizeof(float)));
    for (int i = 0; i < n_seqs; i++) seqs[i]->kv.n_tokens += n_tokens[i];
    return MM_OK;
}

mm_status mm_llama_eval(mm_llama *m, mm_kv_cache *kv, mm_llama_seq *const *seqs, const int32_t *const *tokens,
                        const int32_t *n_tokens, int n_seqs, int all_logits, float *logits) {
    return eval_step(m, kv, seqs, tokens, NULL, n_tokens, n_seqs, all_logits, NULL, logits);
}

mm_status mm_llama_eval_embeds(mm_llama *m, mm_kv_cache *kv, mm_llama_seq *const *seqs, const float *x,
                               const int32_t *n_tokens, int n_seqs, int all_logits, float *normed, float *logits) {
    return eval_step(m, kv, seqs, NULL, x, n_tokens, n_seqs, all_logits, normed, logits);
}
