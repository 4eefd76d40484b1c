/* LLaMA decoder: config parsing, weight loading for a slice of layers, and the forward
 * pass over a batch of rows from many sequences (see llama.h). Maths only: it calls
 * backend ops and never touches threads, sockets or MPI. */
#include "llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/q8.h"
#include "common/log.h"

/* ---------------------------------------------------------------- config */

/* rope_scaling validated per rope_type as transformers' rope_config_validation and
 * LlamaConfig do: absent or null means none; any other value must be an object whose
 * rope_type (or legacy "type", which LlamaConfig copies over rope_type) names a type;
 * each type's required keys must be present ("factor" alone has no type: refused, as
 * transformers' KeyError). Types we cannot compute (dynamic, yarn, longrope, ...) and
 * unknown ones are refused rather than run with another RoPE. */
static mm_status config_rope_scaling(const mm_json *root, const char *file, mm_llama_config *c) {
    const mm_json *rs = mm_json_get(root, "rope_scaling");
    c->rope_type = MM_ROPE_DEFAULT;
    if (!mm_json_has(root, "rope_scaling")) return MM_OK;
    char shown[MM_JSON_SHOWN_CAP];
    if (!mm_json_is_object(rs))
        return MM_ERROR(MM_ERR_FORMAT, "%s: key 'rope_scaling' = %s must be an object or null", file,
                        mm_json_show(rs, shown, sizeof shown));
    const char *type = NULL;
    CHECK(mm_json_str(rs, file, "type", NULL, &type));
    if (!type) CHECK(mm_json_str(rs, file, "rope_type", NULL, &type));
    if (!type)
        return MM_ERROR(MM_ERR_FORMAT, "%s: key 'rope_scaling' = %s has no rope_type", file,
                        mm_json_show(rs, shown, sizeof shown));
    static const char *const llama3_keys[] = {"factor", "original_max_position_embeddings", "low_freq_factor",
                                              "high_freq_factor"};
    size_t n_required = 0;
    if (!strcmp(type, "llama3")) c->rope_type = MM_ROPE_LLAMA3, n_required = 4;
    else if (!strcmp(type, "linear")) c->rope_type = MM_ROPE_LINEAR, n_required = 1;
    else if (strcmp(type, "default"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key 'rope_scaling.rope_type' = \"%s\" is not supported (default, "
                        "linear, llama3)", file, type);
    for (size_t i = 0; i < n_required; i++)
        if (!mm_json_has(rs, llama3_keys[i]))
            return MM_ERROR(MM_ERR_FORMAT, "%s: key 'rope_scaling.%s' is missing (required for rope_type \"%s\")", file,
                            llama3_keys[i], type);
    if (c->rope_type == MM_ROPE_DEFAULT) return MM_OK;
    double factor, lo = 1.0, hi = 4.0;
    int64_t orig = 8192;
    /* factor < 1 only warns in transformers and still computes; <= 0 divides by zero */
    CHECK(mm_json_num_in(rs, file, "factor", 0, 0, 1e6, 1, &factor));
    if (c->rope_type == MM_ROPE_LLAMA3) {
        CHECK(mm_json_num_in(rs, file, "low_freq_factor", 0, 0, 1e6, 1, &lo));
        CHECK(mm_json_num_in(rs, file, "high_freq_factor", 0, 0, 1e6, 1, &hi));
        CHECK(mm_json_int_in(rs, file, "original_max_position_embeddings", 0, 1, INT32_MAX, &orig));
        if (!(hi > lo))
            return MM_ERROR(MM_ERR_FORMAT, "%s: key 'rope_scaling.high_freq_factor' = %g must exceed low_freq_factor %g",
                            file, hi, lo);
    }
    if (factor < 1.0) LOG_WARN("%s: rope_scaling.factor %g < 1 (transformers warns too)", file, factor);
    c->rope_factor = (float)factor, c->rope_low_freq_factor = (float)lo, c->rope_high_freq_factor = (float)hi;
    c->rope_original_max_pos = (int32_t)orig;
    return MM_OK;
}

/* quantization_config: absent, or our q8 format (common/q8.h). Any other method
 * (GPTQ, AWQ, bitsandbytes, ...) is refused rather than read as something else. */
static mm_status config_quantization(const mm_json *root, const char *file, mm_llama_config *c) {
    c->q8 = 0;
    if (!mm_json_has(root, "quantization_config")) return MM_OK;
    const mm_json *q = mm_json_get(root, "quantization_config");
    const char *method = NULL, *scale = NULL;
    int32_t block;
    if (!mm_json_is_object(q)) return MM_ERROR(MM_ERR_FORMAT, "%s: key 'quantization_config' must be an object", file);
    CHECK(mm_json_str(q, file, "quant_method", "", &method));
    if (strcmp(method, MM_Q8_METHOD))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key 'quantization_config.quant_method' = \"%s\" is not supported (%s)",
                        file, method, MM_Q8_METHOD);
    CHECK(mm_json_i32_in(q, file, "block_size", MM_Q8_BLOCK, MM_Q8_BLOCK, MM_Q8_BLOCK, &block));
    CHECK(mm_json_str(q, file, "scale_dtype", "float16", &scale));
    if (strcmp(scale, "float16"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key 'quantization_config.scale_dtype' = \"%s\" is not supported "
                        "(float16)", file, scale);
    c->q8 = 1;
    return MM_OK;
}

/* The largest sizes accepted: beyond them a config is corrupt, not a model (and every
 * product of two of them still fits in 64 bits). */
#define CFG_MAX_WIDTH (1 << 20)     /* hidden_size, intermediate_size */
#define CFG_MAX_COUNT 4096          /* layers, heads */
#define CFG_MAX_VOCAB (1 << 24)
#define CFG_MAX_CONTEXT (1 << 30)   /* positions are int32 everywhere */

static mm_status config_parse(const mm_json *root, const char *file, void *out) {
    mm_llama_config *c = out;
    memset(c, 0, sizeof *c);
    const char *model_type, *act;
    CHECK(mm_json_str(root, file, "model_type", "llama", &model_type));
    if (strcmp(model_type, "llama") && strcmp(model_type, "metamorph_llama"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key 'model_type' = \"%s\" is not a LLaMA (llama, metamorph_llama)",
                        file, model_type);
    CHECK(mm_json_i32_in(root, file, "hidden_size", 0, 1, CFG_MAX_WIDTH, &c->dim));
    CHECK(mm_json_i32_in(root, file, "num_hidden_layers", 0, 1, CFG_MAX_COUNT, &c->n_layers));
    CHECK(mm_json_i32_in(root, file, "num_attention_heads", 0, 1, CFG_MAX_COUNT, &c->n_heads));
    CHECK(mm_json_i32_in(root, file, "num_key_value_heads", c->n_heads, 1, c->n_heads, &c->n_kv_heads));
    CHECK(mm_json_i32_in(root, file, "intermediate_size", 0, 1, CFG_MAX_WIDTH, &c->hidden_dim));
    CHECK(mm_json_i32_in(root, file, "vocab_size", 0, 1, CFG_MAX_VOCAB, &c->vocab_size));
    CHECK(mm_json_i32_in(root, file, "max_position_embeddings", 2048, 1, CFG_MAX_CONTEXT, &c->max_pos));
    double eps, theta;
    CHECK(mm_json_num_in(root, file, "rms_norm_eps", 1e-6, 0, 1, 0, &eps));
    CHECK(mm_json_num_in(root, file, "rope_theta", 10000.0, 0, 1e12, 1, &theta));
    int attn_bias, mlp_bias;
    CHECK(mm_json_bool(root, file, "tie_word_embeddings", 0, &c->tie_embeddings));
    CHECK(mm_json_bool(root, file, "attention_bias", 0, &attn_bias));
    CHECK(mm_json_bool(root, file, "mlp_bias", 0, &mlp_bias));
    CHECK(mm_json_str(root, file, "hidden_act", "silu", &act));
    CHECK(mm_json_i32_in(root, file, "bos_token_id", -1, -1, c->vocab_size - 1, &c->bos_id));
    if (!mm_json_has(root, "head_dim") && c->dim % c->n_heads)
        return MM_ERROR(MM_ERR_FORMAT, "%s: key 'hidden_size' = %d is not a multiple of num_attention_heads %d "
                        "(and no head_dim is given)", file, c->dim, c->n_heads);
    CHECK(mm_json_i32_in(root, file, "head_dim", c->dim / c->n_heads, 2, 4096, &c->head_dim));
    if (c->head_dim % 2) return MM_ERROR(MM_ERR_FORMAT, "%s: key 'head_dim' = %d must be even (RoPE pairs)", file, c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return MM_ERROR(MM_ERR_FORMAT, "%s: key 'num_key_value_heads' = %d does not divide num_attention_heads %d", file,
                        c->n_kv_heads, c->n_heads);
    if (attn_bias || mlp_bias)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key '%s' = true is not supported", file,
                        attn_bias ? "attention_bias" : "mlp_bias");
    if (strcmp(act, "silu"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key 'hidden_act' = \"%s\" is not supported (silu)", file, act);
    c->norm_eps = (float)eps, c->rope_theta = (float)theta;
    CHECK(config_rope_scaling(root, file, c));
    CHECK(config_quantization(root, file, c));
    int64_t eos[MM_LLAMA_MAX_EOS];
    CHECK(mm_json_int_list(root, file, "eos_token_id", eos, MM_LLAMA_MAX_EOS, &c->n_eos));
    for (int i = 0; i < c->n_eos; i++) {
        if (eos[i] < 0 || eos[i] >= c->vocab_size)
            return MM_ERROR(MM_ERR_FORMAT, "%s: key 'eos_token_id' = %lld outside [0, %d)", file, (long long)eos[i],
                            c->vocab_size);
        c->eos_ids[i] = (int32_t)eos[i];
    }
    return MM_OK;
}

mm_status mm_llama_config_load(const char *dir, mm_llama_config *c) {
    return mm_json_load_parsed(dir, "config.json", config_parse, c);
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
    for (int32_t l = 0; l < m->layer_end - m->layer_begin; l++) {
        const mm_tensor *w = m->layers[l].k_proj.data ? &m->layers[l].k_proj : &m->layers[l].gate_proj;
        if (w->data) return w->dtype == MM_DTYPE_BF16 ? MM_DTYPE_BF16 : MM_DTYPE_F32; /* q8 (I8): f32 */
    }
    return MM_DTYPE_F32;
}

mm_status mm_llama_kv_dtype_parse(const mm_llama *m, const char *name, mm_dtype *out) {
    if (!strcmp(name, "auto")) *out = mm_llama_kv_dtype(m);
    else if (!strcmp(name, "f32")) *out = MM_DTYPE_F32;
    else if (!strcmp(name, "bf16")) *out = MM_DTYPE_BF16;
    else return MM_ERROR(MM_ERR_INVALID, "kv_dtype \"%s\" (auto, f32, bf16)", name);
    return MM_OK;
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
    if (t->dtype != MM_DTYPE_I8) return m->be->ops->weight_load(m->be, t, use, out);
    /* a q8 weight (common/q8.h): NAME.weight I8 + NAME.weight_scale F16 */
    if (use != MM_WEIGHT_MATMUL || !m->cfg.q8)
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' is I8 but %s", t->file, name,
                        use != MM_WEIGHT_MATMUL ? "only matmul weights may be q8"
                                                : "config.json has no quantization_config (quant_method " MM_Q8_METHOD ")");
    if (!m->be->ops->weight_load_q8)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: tensor '%s' is q8 (int8), which the %s backend cannot compute", t->file,
                        name, m->be->ops->name);
    char scale_name[300];
    snprintf(scale_name, sizeof scale_name, "%s" MM_Q8_SCALE_SUFFIX, name);
    const mm_st_tensor *d;
    int64_t scale_shape[2] = {rows, cols / MM_Q8_BLOCK};
    CHECK(mm_safetensors_get(m->st, scale_name, 2, scale_shape, &d));
    return m->be->ops->weight_load_q8(m->be, t, d, out);
}

/* Does this model slice own layer l's attention / MLP block? (l: absolute layer) */
static int owns_attention(const mm_llama *m, int32_t l) {
    int32_t b = l * MM_LLAMA_BLOCKS_PER_LAYER;
    return b >= m->block_begin && b < m->block_end;
}
static int owns_mlp(const mm_llama *m, int32_t l) {
    int32_t b = l * MM_LLAMA_BLOCKS_PER_LAYER + 1;
    return b >= m->block_begin && b < m->block_end;
}

/* Layer l's owned halves into L (the other half stays zeroed: not loaded). */
static mm_status load_layer(mm_llama *m, int32_t l, mm_llama_layer *L) {
    const mm_llama_config *c = &m->cfg;
    int64_t q_out = (int64_t)c->n_heads * c->head_dim, kv_out = (int64_t)c->n_kv_heads * c->head_dim;
    char name[256];
#define W(field, path, rows, cols, use)                                                            \
    snprintf(name, sizeof name, "model.layers.%d." path, l);                                       \
    CHECK(load_weight(m, name, rows, cols, use, &L->field))
    if (owns_attention(m, l)) {
        W(input_layernorm, "input_layernorm.weight", c->dim, 0, MM_WEIGHT_VECTOR);
        W(q_proj, "self_attn.q_proj.weight", q_out, c->dim, MM_WEIGHT_MATMUL);
        W(k_proj, "self_attn.k_proj.weight", kv_out, c->dim, MM_WEIGHT_MATMUL);
        W(v_proj, "self_attn.v_proj.weight", kv_out, c->dim, MM_WEIGHT_MATMUL);
        W(o_proj, "self_attn.o_proj.weight", c->dim, q_out, MM_WEIGHT_MATMUL);
    }
    if (owns_mlp(m, l)) {
        W(post_attention_layernorm, "post_attention_layernorm.weight", c->dim, 0, MM_WEIGHT_VECTOR);
        W(gate_proj, "mlp.gate_proj.weight", c->hidden_dim, c->dim, MM_WEIGHT_MATMUL);
        W(up_proj, "mlp.up_proj.weight", c->hidden_dim, c->dim, MM_WEIGHT_MATMUL);
        W(down_proj, "mlp.down_proj.weight", c->dim, c->hidden_dim, MM_WEIGHT_MATMUL);
    }
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
    if (layer_begin < 0) return MM_ERROR(MM_ERR_INVALID, "%s: layer range starts at %d", dir, layer_begin);
    return mm_llama_load_blocks(dir, be, layer_begin * MM_LLAMA_BLOCKS_PER_LAYER,
                                layer_end < 0 ? -1 : layer_end * MM_LLAMA_BLOCKS_PER_LAYER, parts, out);
}

mm_status mm_llama_load_blocks(const char *dir, mm_backend *be, int32_t block_begin, int32_t block_end, int parts,
                               mm_llama **out) {
    mm_llama *m = calloc(1, sizeof *m);
    CHECK(CHECK_ALLOC(m));
    m->be = be;
    mm_status s;
    CHECK_GOTO(mm_llama_config_load(dir, &m->cfg), s, fail);
    const mm_llama_config *c = &m->cfg;
    int32_t n_blocks = c->n_layers * MM_LLAMA_BLOCKS_PER_LAYER;
    if (block_end < 0) block_end = n_blocks;
    if (block_begin < 0 || block_begin > block_end || block_end > n_blocks) {
        s = MM_ERROR(MM_ERR_INVALID, "%s: block range [%d, %d) outside [0, %d) (%d layers of %d blocks)", dir,
                     block_begin, block_end, n_blocks, c->n_layers, MM_LLAMA_BLOCKS_PER_LAYER);
        goto fail;
    }
    m->block_begin = block_begin, m->block_end = block_end;
    m->layer_begin = block_begin / MM_LLAMA_BLOCKS_PER_LAYER;
    m->layer_end = (block_end + MM_LLAMA_BLOCKS_PER_LAYER - 1) / MM_LLAMA_BLOCKS_PER_LAYER;
    for (int32_t l = m->layer_begin; l < m->layer_end; l++) m->n_kv_layers += owns_attention(m, l);
    m->has_embed = !!(parts & MM_LLAMA_EMBED), m->has_head = !!(parts & MM_LLAMA_HEAD);
    CHECK_GOTO(mm_safetensors_open(dir, &m->st), s, fail);
    if (m->has_embed)
        CHECK_GOTO(load_weight(m, "model.embed_tokens.weight", c->vocab_size, c->dim, MM_WEIGHT_TABLE, &m->embed_tokens),
                   s, fail);
    int32_t n = m->layer_end - m->layer_begin;
    m->layers = calloc((size_t)(n ? n : 1), sizeof *m->layers);
    CHECK_GOTO(CHECK_ALLOC(m->layers), s, fail);
    for (int32_t l = 0; l < n; l++) CHECK_GOTO(load_layer(m, m->layer_begin + l, &m->layers[l]), s, fail);
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

/* model.layers.N.self_attn with its input_layernorm: x += o_proj(attention(...)). */
static mm_status self_attn_block(mm_llama *m, const mm_llama_layer *L, mm_kv_cache *kv, int32_t kv_layer,
                                 const mm_llama_batch *b, float *x) {
    mm_backend *be = m->be;
    const mm_backend_ops *op = be->ops;
    const mm_llama_config *c = &m->cfg;
    mm_llama_scratch *s = &m->scratch;
    int64_t M = b->n_rows;
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
    return op->add(be, x, s->out, M * c->dim);
}

/* model.layers.N.mlp with its post_attention_layernorm: x += down(silu(gate) * up). */
static mm_status mlp_block(mm_llama *m, const mm_llama_layer *L, int64_t M, float *x) {
    mm_backend *be = m->be;
    const mm_backend_ops *op = be->ops;
    const mm_llama_config *c = &m->cfg;
    mm_llama_scratch *s = &m->scratch;
    CHECK(op->rmsnorm(be, x, L->post_attention_layernorm.data, s->xn, M, c->dim, c->norm_eps));
    CHECK(op->matmul(be, &L->gate_proj, s->xn, s->gate, M));
    CHECK(op->matmul(be, &L->up_proj, s->xn, s->up, M));
    CHECK(op->silu_mul(be, s->gate, s->up, M * c->hidden_dim));
    CHECK(op->matmul(be, &L->down_proj, s->gate, s->out, M));
    return op->add(be, x, s->out, M * c->dim);
}

mm_status mm_llama_forward_layers(mm_llama *m, mm_kv_cache *kv, const mm_llama_batch *b, float *x) {
    int32_t n = m->layer_end - m->layer_begin;
    if (kv->n_layers != m->n_kv_layers || kv->n_kv_heads != m->cfg.n_kv_heads || kv->head_dim != m->cfg.head_dim)
        return MM_ERROR(MM_ERR_INVALID, "KV cache geometry (%d layers, %d kv heads x %d) does not match the model slice "
                        "(%d attention layers, %d x %d)", kv->n_layers, kv->n_kv_heads, kv->head_dim, m->n_kv_layers,
                        m->cfg.n_kv_heads, m->cfg.head_dim);
    for (int64_t r = 0; r < b->n_rows; r++)
        if (b->pos[r] < 0 || b->pos[r] >= m->cfg.max_pos)
            return MM_ERROR(MM_ERR_INVALID, "position %d outside the context [0, %d)", b->pos[r], m->cfg.max_pos);
    CHECK(scratch_reserve(m, b->n_rows));
    /* a slice starting at an MLP block has no KV for its first layer */
    int32_t kv_skip = owns_attention(m, m->layer_begin) ? 0 : 1;
    for (int32_t l = 0; l < n; l++) {
        if (owns_attention(m, m->layer_begin + l)) {
            CHECK(self_attn_block(m, &m->layers[l], kv, l - kv_skip, b, x));
            if (m->between_blocks) CHECK(m->between_blocks(m->between_blocks_user));
        }
        if (owns_mlp(m, m->layer_begin + l)) {
            CHECK(mlp_block(m, &m->layers[l], b->n_rows, x));
            if (m->between_blocks) CHECK(m->between_blocks(m->between_blocks_user));
        }
    }
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
    if (!m->has_embed || !m->has_head || m->block_begin != 0 || m->block_end != m->cfg.n_layers * MM_LLAMA_BLOCKS_PER_LAYER)
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
