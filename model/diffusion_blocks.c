/* The modules shared by the UNet and the VAE decoder (see diffusion_blocks.h), written
 * after diffusers' resnet.py, attention_processor.py (Attention), attention.py
 * (BasicTransformerBlock, GEGLU) and transformer_2d.py. Weight names are diffusers'
 * exactly. Maths only. */
#include "diffusion_blocks.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- config helpers */

/* One value of mm_dn_json_int_or_list, checked before it is narrowed. */
static mm_status int_or_list_elem(const json_t *e, const char *file, const char *key, int32_t i, int32_t *out) {
    char shown[MM_JSON_SHOWN_CAP];
    json_int_t x = json_is_integer(e) ? json_integer_value(e) : 0;
    if (x < 1 || x > MM_DN_JSON_MAX_COUNT)
        return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s[%d]' = %s must be an integer in [1, %d]", file, key, i,
                        mm_json_show((const mm_json *)e, shown, sizeof shown), MM_DN_JSON_MAX_COUNT);
    *out = (int32_t)x;
    return MM_OK;
}

/* An int, or a list of n ints (one per block), into out[n]. */
mm_status mm_dn_json_int_or_list(const mm_json *root, const char *file, const char *key, int32_t n, int64_t def, int32_t *out) {
    const json_t *v = (const json_t *)mm_json_get(root, key);
    if (!v || json_is_null(v)) {
        for (int32_t i = 0; i < n; i++) out[i] = (int32_t)def;
        return MM_OK;
    }
    if (!json_is_array(v)) {
        for (int32_t i = 0; i < n; i++) CHECK(int_or_list_elem(v, file, key, i, &out[i]));
        return MM_OK;
    }
    if ((int32_t)json_array_size(v) != n)
        return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s' has %zu values for %d blocks", file, key, json_array_size(v), n);
    for (int32_t i = 0; i < n; i++) CHECK(int_or_list_elem(json_array_get(v, (size_t)i), file, key, i, &out[i]));
    return MM_OK;
}

mm_status mm_dn_json_str_list(const mm_json *root, const char *file, const char *key, const char **out, int cap, int *n) {
    const json_t *v = (const json_t *)mm_json_get(root, key);
    if (!v || !json_is_array(v) || json_array_size(v) == 0 || (int)json_array_size(v) > cap)
        return MM_ERROR(MM_ERR_FORMAT, "%s: '%s' must be a list of 1..%d strings", file, key, cap);
    *n = (int)json_array_size(v);
    for (int i = 0; i < *n; i++) {
        out[i] = json_string_value(json_array_get(v, (size_t)i));
        if (!out[i]) return MM_ERROR(MM_ERR_FORMAT, "%s: '%s'[%d] is not a string", file, key, i);
    }
    return MM_OK;
}

/* A key that must be absent or null (a feature SD 1.x/2.x does not use). */
mm_status mm_dn_json_require_null(const mm_json *root, const char *file, const char *key) {
    const json_t *v = (const json_t *)mm_json_get(root, key);
    if (v && !json_is_null(v)) return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: '%s' is set; only null is supported", file, key);
    return MM_OK;
}

mm_status mm_dn_json_require_str(const mm_json *root, const char *file, const char *key, const char *def, const char *want) {
    const char *s;
    CHECK(mm_json_str(root, file, key, def, &s));
    if (strcmp(s, want)) return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: '%s' is '%s'; only '%s' is supported", file, key, s, want);
    return MM_OK;
}

mm_status mm_dn_json_require_int(const mm_json *root, const char *file, const char *key, int64_t def, int64_t want) {
    int64_t v;
    CHECK(mm_json_int(root, file, key, def, &v));
    if (v != want) return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: '%s' is %lld; only %lld is supported", file, key, (long long)v, (long long)want);
    return MM_OK;
}

/* ---------------------------------------------------------------- arena */

#define ARENA_CHUNK_BYTES ((size_t)64 << 20)

void mm_arena_init(mm_arena *a, mm_backend *be) {
    memset(a, 0, sizeof *a);
    a->be = be;
}

void mm_arena_free(mm_arena *a) {
    for (int i = 0; i < a->n_chunks; i++) a->be->ops->dealloc(a->be, a->chunk[i]);
    mm_arena_init(a, a->be);
}

mm_status mm_arena_floats(mm_arena *a, int64_t n, float **out) {
    size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
    /* first chunk from the current one on that has room (later chunks are empty after a release) */
    for (int c = a->cur; c < a->n_chunks; c++) {
        size_t used = c == a->cur ? a->used : 0;
        if (used + bytes <= a->cap[c]) {
            *out = (float *)((char *)a->chunk[c] + used);
            a->cur = c, a->used = used + bytes;
            return MM_OK;
        }
    }
    if (a->n_chunks == MM_ARENA_MAX_CHUNKS) return MM_ERROR(MM_ERR_NOMEM, "activation arena: too many chunks");
    size_t cap = bytes > ARENA_CHUNK_BYTES ? bytes : ARENA_CHUNK_BYTES;
    void *p = a->be->ops->alloc(a->be, cap);
    if (!p) return MM_ERROR(MM_ERR_NOMEM, "activation arena: %zu bytes", cap);
    /* keep chunks ordered by use: the new one goes right after those in use */
    int at = a->n_chunks++;
    a->chunk[at] = p, a->cap[at] = cap;
    a->cur = at, a->used = bytes;
    *out = p;
    return MM_OK;
}

/* ---------------------------------------------------------------- weights */

static mm_status loader_keep(mm_dn_loader *L, mm_tensor *t) {
    if (L->n_owned == L->cap_owned) {
        int cap = L->cap_owned ? 2 * L->cap_owned : 256;
        mm_tensor **p = realloc(L->owned, (size_t)cap * sizeof *p);
        CHECK(CHECK_ALLOC(p));
        L->owned = p, L->cap_owned = cap;
    }
    L->owned[L->n_owned++] = t;
    return MM_OK;
}

/* Loads tensor name with the given shape (entries < 0: any) for use into *out. */
static mm_status load_tensor(mm_dn_loader *L, const char *name, int ndim, const int64_t *shape, mm_weight_use use,
                             mm_tensor *out) {
    const mm_st_tensor *t;
    CHECK(mm_safetensors_get(L->st, name, ndim, shape, &t));
    CHECK(L->be->ops->weight_load(L->be, t, use, out));
    mm_status s = loader_keep(L, out);
    if (s != MM_OK) L->be->ops->weight_release(L->be, out);
    return s;
}

void mm_dn_loader_release(mm_dn_loader *L) {
    for (int i = 0; i < L->n_owned; i++)
        if (L->owned[i]->data || L->owned[i]->backend_data) L->be->ops->weight_release(L->be, L->owned[i]);
    free(L->owned);
    L->owned = NULL, L->n_owned = L->cap_owned = 0;
}

mm_status mm_dn_load_linear(mm_dn_loader *L, const char *name, int64_t in, int64_t out, int bias, mm_dn_linear *m) {
    char key[512];
    memset(m, 0, sizeof *m);
    m->in = in, m->out = out;
    int64_t ws[2] = {out, in}, bs[1] = {out};
    snprintf(key, sizeof key, "%s.weight", name);
    CHECK(load_tensor(L, key, 2, ws, MM_WEIGHT_MATMUL, &m->w));
    if (bias) {
        snprintf(key, sizeof key, "%s.bias", name);
        CHECK(load_tensor(L, key, 1, bs, MM_WEIGHT_VECTOR, &m->b));
    }
    return MM_OK;
}

mm_status mm_dn_load_conv(mm_dn_loader *L, const char *name, int64_t in, int64_t out, int64_t k, mm_dn_conv *m) {
    char key[512];
    memset(m, 0, sizeof *m);
    m->in = in, m->out = out, m->k = k;
    int64_t ws[4] = {out, in, k, k}, bs[1] = {out};
    snprintf(key, sizeof key, "%s.weight", name);
    CHECK(load_tensor(L, key, 4, ws, MM_WEIGHT_CONV, &m->w));
    snprintf(key, sizeof key, "%s.bias", name);
    return load_tensor(L, key, 1, bs, MM_WEIGHT_VECTOR, &m->b);
}

mm_status mm_dn_load_norm(mm_dn_loader *L, const char *name, int64_t C, mm_dn_norm *m) {
    char key[512];
    int64_t s[1] = {C};
    snprintf(key, sizeof key, "%s.weight", name);
    CHECK(load_tensor(L, key, 1, s, MM_WEIGHT_VECTOR, &m->w));
    snprintf(key, sizeof key, "%s.bias", name);
    return load_tensor(L, key, 1, s, MM_WEIGHT_VECTOR, &m->b);
}

mm_status mm_dn_linear_forward(mm_backend *be, const mm_dn_linear *m, const float *x, float *y, int64_t M) {
    CHECK(be->ops->matmul(be, &m->w, x, y, M));
    if (m->b.data) CHECK(be->ops->add_bias(be, y, (const float *)m->b.data, M, m->out));
    return MM_OK;
}

mm_status mm_dn_conv_forward(mm_backend *be, const mm_dn_conv *m, const float *x, float *y, int64_t B, int64_t H,
                             int64_t W, int32_t stride, int32_t pad) {
    return be->ops->conv2d(be, &m->w, (const float *)m->b.data, x, y, B, H, W, stride, pad);
}

static const float *vec(const mm_tensor *t) { return (const float *)t->data; }

/* ---------------------------------------------------------------- ResnetBlock2D */

mm_status mm_dn_resnet_load(mm_dn_loader *L, const char *prefix, int64_t in, int64_t out, int64_t temb_dim,
                            int32_t groups, float eps, mm_dn_resnet *r) {
    char name[512];
    memset(r, 0, sizeof *r);
    r->in = in, r->out = out, r->groups = groups, r->eps = eps;
    if (in % groups || out % groups)
        return MM_ERROR(MM_ERR_FORMAT, "%s: channels %lld/%lld not divisible by norm_num_groups %d", prefix,
                        (long long)in, (long long)out, groups);
#define P(suffix) (snprintf(name, sizeof name, "%s." suffix, prefix), name)
    CHECK(mm_dn_load_norm(L, P("norm1"), in, &r->norm1));
    CHECK(mm_dn_load_conv(L, P("conv1"), in, out, 3, &r->conv1));
    if (temb_dim > 0) CHECK(mm_dn_load_linear(L, P("time_emb_proj"), temb_dim, out, 1, &r->time_emb_proj));
    CHECK(mm_dn_load_norm(L, P("norm2"), out, &r->norm2));
    CHECK(mm_dn_load_conv(L, P("conv2"), out, out, 3, &r->conv2));
    if (in != out) CHECK(mm_dn_load_conv(L, P("conv_shortcut"), in, out, 1, &r->conv_shortcut));
#undef P
    return MM_OK;
}

/* h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb)); h = conv2(silu(norm2(h)));
 * out = shortcut(x) + h (dropout is the identity at inference). */
mm_status mm_dn_resnet_forward(mm_arena *a, const mm_dn_resnet *r, const float *x, const float *temb_act, int64_t B,
                               int64_t H, int64_t W, float *out) {
    mm_backend *be = a->be;
    int64_t HW = H * W;
    mm_arena_mark mark = mm_arena_get_mark(a);
    mm_status s = MM_OK;
    float *t, *h; /* t [B, HW, in], h [B, HW, out] */
    CHECK_GOTO(mm_arena_floats(a, B * HW * r->in, &t), s, done);
    CHECK_GOTO(mm_arena_floats(a, B * HW * r->out, &h), s, done);
    CHECK_GOTO(be->ops->groupnorm(be, x, vec(&r->norm1.w), vec(&r->norm1.b), t, B, HW, r->in, r->groups, r->eps, 1), s, done);
    CHECK_GOTO(mm_dn_conv_forward(be, &r->conv1, t, h, B, H, W, 1, 1), s, done);
    if (temb_act && r->time_emb_proj.w.data) {
        float *tp; /* [B, out] */
        CHECK_GOTO(mm_arena_floats(a, B * r->out, &tp), s, done);
        CHECK_GOTO(mm_dn_linear_forward(be, &r->time_emb_proj, temb_act, tp, B), s, done);
        for (int64_t b = 0; b < B; b++) CHECK_GOTO(be->ops->add_bias(be, h + b * HW * r->out, tp + b * r->out, HW, r->out), s, done);
    }
    CHECK_GOTO(be->ops->groupnorm(be, h, vec(&r->norm2.w), vec(&r->norm2.b), h, B, HW, r->out, r->groups, r->eps, 1), s, done);
    CHECK_GOTO(mm_dn_conv_forward(be, &r->conv2, h, out, B, H, W, 1, 1), s, done);
    if (r->conv_shortcut.w.data) {
        CHECK_GOTO(mm_dn_conv_forward(be, &r->conv_shortcut, x, h, B, H, W, 1, 0), s, done);
        CHECK_GOTO(be->ops->add(be, out, h, B * HW * r->out), s, done);
    } else {
        CHECK_GOTO(be->ops->add(be, out, x, B * HW * r->out), s, done);
    }
done:
    mm_arena_release(a, mark);
    return s;
}

/* ---------------------------------------------------------------- Attention */

mm_status mm_dn_attention_load(mm_dn_loader *L, const char *prefix, int64_t query_dim, int64_t ctx_dim, int32_t heads,
                               int32_t head_dim, int qkv_bias, mm_dn_attention *m) {
    char name[512];
    memset(m, 0, sizeof *m);
    m->heads = heads, m->head_dim = head_dim, m->query_dim = query_dim, m->ctx_dim = ctx_dim;
    m->inner = (int64_t)heads * head_dim;
#define P(suffix) (snprintf(name, sizeof name, "%s." suffix, prefix), name)
    CHECK(mm_dn_load_linear(L, P("to_q"), query_dim, m->inner, qkv_bias, &m->to_q));
    CHECK(mm_dn_load_linear(L, P("to_k"), ctx_dim, m->inner, qkv_bias, &m->to_k));
    CHECK(mm_dn_load_linear(L, P("to_v"), ctx_dim, m->inner, qkv_bias, &m->to_v));
    CHECK(mm_dn_load_linear(L, P("to_out.0"), m->inner, query_dim, 1, &m->to_out));
#undef P
    return MM_OK;
}

mm_status mm_dn_attention_forward(mm_arena *a, const mm_dn_attention *m, const float *x, const float *ctx, int64_t B,
                                  int64_t Tq, int64_t Tk, float *out) {
    mm_backend *be = a->be;
    if (!ctx) ctx = x, Tk = Tq;
    mm_arena_mark mark = mm_arena_get_mark(a);
    mm_status s = MM_OK;
    float *q, *k, *v, *o; /* q, o [B, Tq, inner]; k, v [B, Tk, inner] */
    CHECK_GOTO(mm_arena_floats(a, B * Tq * m->inner, &q), s, done);
    CHECK_GOTO(mm_arena_floats(a, B * Tk * m->inner, &k), s, done);
    CHECK_GOTO(mm_arena_floats(a, B * Tk * m->inner, &v), s, done);
    CHECK_GOTO(mm_arena_floats(a, B * Tq * m->inner, &o), s, done);
    CHECK_GOTO(mm_dn_linear_forward(be, &m->to_q, x, q, B * Tq), s, done);
    CHECK_GOTO(mm_dn_linear_forward(be, &m->to_k, ctx, k, B * Tk), s, done);
    CHECK_GOTO(mm_dn_linear_forward(be, &m->to_v, ctx, v, B * Tk), s, done);
    CHECK_GOTO(be->ops->attention_dense(be, q, k, v, B, Tq, Tk, m->heads, m->head_dim,
                                        1.0f / sqrtf((float)m->head_dim), o), s, done);
    CHECK_GOTO(mm_dn_linear_forward(be, &m->to_out, o, out, B * Tq), s, done);
done:
    mm_arena_release(a, mark);
    return s;
}

/* ---------------------------------------------------------------- Transformer2DModel */

mm_status mm_dn_transformer_load(mm_dn_loader *L, const char *prefix, int64_t channels, int32_t heads, int32_t n_layers,
                                 int64_t cross_dim, int32_t groups, int use_linear_projection, mm_dn_transformer *t) {
    char name[512];
    memset(t, 0, sizeof *t);
    if (heads <= 0 || channels % heads)
        return MM_ERROR(MM_ERR_FORMAT, "%s: %lld channels not divisible by %d attention heads", prefix, (long long)channels, heads);
    t->channels = channels, t->inner = channels, t->groups = groups, t->n_layers = n_layers;
    t->use_linear_projection = use_linear_projection;
    int32_t head_dim = (int32_t)(channels / heads);
    CHECK(mm_dn_load_norm(L, (snprintf(name, sizeof name, "%s.norm", prefix), name), channels, &t->norm));
    if (use_linear_projection) {
        CHECK(mm_dn_load_linear(L, (snprintf(name, sizeof name, "%s.proj_in", prefix), name), channels, t->inner, 1, &t->proj_in_lin));
        CHECK(mm_dn_load_linear(L, (snprintf(name, sizeof name, "%s.proj_out", prefix), name), t->inner, channels, 1, &t->proj_out_lin));
    } else {
        CHECK(mm_dn_load_conv(L, (snprintf(name, sizeof name, "%s.proj_in", prefix), name), channels, t->inner, 1, &t->proj_in_conv));
        CHECK(mm_dn_load_conv(L, (snprintf(name, sizeof name, "%s.proj_out", prefix), name), t->inner, channels, 1, &t->proj_out_conv));
    }
    t->blocks = calloc((size_t)n_layers, sizeof *t->blocks);
    CHECK(CHECK_ALLOC(t->blocks));
    for (int32_t l = 0; l < n_layers; l++) {
        mm_dn_basic_block *b = &t->blocks[l];
        int64_t D = t->inner;
        b->ff_inner = 4 * D;
#define P(suffix) (snprintf(name, sizeof name, "%s.transformer_blocks.%d." suffix, prefix, l), name)
        CHECK(mm_dn_load_norm(L, P("norm1"), D, &b->norm1));
        CHECK(mm_dn_attention_load(L, P("attn1"), D, D, heads, head_dim, 0, &b->attn1));
        CHECK(mm_dn_load_norm(L, P("norm2"), D, &b->norm2));
        CHECK(mm_dn_attention_load(L, P("attn2"), D, cross_dim, heads, head_dim, 0, &b->attn2));
        CHECK(mm_dn_load_norm(L, P("norm3"), D, &b->norm3));
        CHECK(mm_dn_load_linear(L, P("ff.net.0.proj"), D, 2 * b->ff_inner, 1, &b->ff_proj));
        CHECK(mm_dn_load_linear(L, P("ff.net.2"), b->ff_inner, D, 1, &b->ff_out));
#undef P
    }
    return MM_OK;
}

void mm_dn_transformer_free(mm_dn_transformer *t) {
    free(t->blocks);
    t->blocks = NULL;
}

/* h = h + attn1(norm1(h)); h = h + attn2(norm2(h), ctx); h = h + ff(norm3(h)) */
static mm_status basic_block_forward(mm_arena *a, const mm_dn_basic_block *b, float *h, const float *ctx, int64_t B,
                                     int64_t HW, int64_t T, int64_t D) {
    mm_backend *be = a->be;
    int64_t M = B * HW;
    mm_arena_mark mark = mm_arena_get_mark(a);
    mm_status s = MM_OK;
    float *n, *o, *f, *g; /* n, o [M, D]; f [M, 2 ff_inner]; g [M, ff_inner] */
    CHECK_GOTO(mm_arena_floats(a, M * D, &n), s, done);
    CHECK_GOTO(mm_arena_floats(a, M * D, &o), s, done);
    CHECK_GOTO(be->ops->layernorm(be, h, vec(&b->norm1.w), vec(&b->norm1.b), n, M, D, 1e-5f), s, done);
    CHECK_GOTO(mm_dn_attention_forward(a, &b->attn1, n, NULL, B, HW, HW, o), s, done);
    CHECK_GOTO(be->ops->add(be, h, o, M * D), s, done);
    CHECK_GOTO(be->ops->layernorm(be, h, vec(&b->norm2.w), vec(&b->norm2.b), n, M, D, 1e-5f), s, done);
    CHECK_GOTO(mm_dn_attention_forward(a, &b->attn2, n, ctx, B, HW, T, o), s, done);
    CHECK_GOTO(be->ops->add(be, h, o, M * D), s, done);
    CHECK_GOTO(be->ops->layernorm(be, h, vec(&b->norm3.w), vec(&b->norm3.b), n, M, D, 1e-5f), s, done);
    CHECK_GOTO(mm_arena_floats(a, M * 2 * b->ff_inner, &f), s, done);
    CHECK_GOTO(mm_arena_floats(a, M * b->ff_inner, &g), s, done);
    CHECK_GOTO(mm_dn_linear_forward(be, &b->ff_proj, n, f, M), s, done);
    CHECK_GOTO(be->ops->geglu(be, f, g, M, b->ff_inner), s, done);
    CHECK_GOTO(mm_dn_linear_forward(be, &b->ff_out, g, o, M), s, done);
    CHECK_GOTO(be->ops->add(be, h, o, M * D), s, done);
done:
    mm_arena_release(a, mark);
    return s;
}

mm_status mm_dn_transformer_forward(mm_arena *a, const mm_dn_transformer *t, const float *x, const float *ctx, int64_t B,
                                    int64_t HW, int64_t T, float *out) {
    mm_backend *be = a->be;
    int64_t C = t->channels, D = t->inner, M = B * HW;
    mm_arena_mark mark = mm_arena_get_mark(a);
    mm_status s = MM_OK;
    float *n, *h; /* n [M, C] group-normed input; h [M, D] token stream */
    CHECK_GOTO(mm_arena_floats(a, M * C, &n), s, done);
    CHECK_GOTO(mm_arena_floats(a, M * D, &h), s, done);
    CHECK_GOTO(be->ops->groupnorm(be, x, vec(&t->norm.w), vec(&t->norm.b), n, B, HW, C, t->groups, 1e-6f, 0), s, done);
    /* 1x1 convolutions: the map is passed as B images of HW x 1 pixels (the same maths);
     * passing every pixel as its own 1x1 image makes oneDNN pick a far slower kernel */
    if (t->use_linear_projection)
        CHECK_GOTO(mm_dn_linear_forward(be, &t->proj_in_lin, n, h, M), s, done);
    else
        CHECK_GOTO(mm_dn_conv_forward(be, &t->proj_in_conv, n, h, B, HW, 1, 1, 0), s, done);
    for (int32_t l = 0; l < t->n_layers; l++) CHECK_GOTO(basic_block_forward(a, &t->blocks[l], h, ctx, B, HW, T, D), s, done);
    if (t->use_linear_projection)
        CHECK_GOTO(mm_dn_linear_forward(be, &t->proj_out_lin, h, out, M), s, done);
    else
        CHECK_GOTO(mm_dn_conv_forward(be, &t->proj_out_conv, h, out, B, HW, 1, 1, 0), s, done);
    CHECK_GOTO(be->ops->add(be, out, x, M * C), s, done);
done:
    mm_arena_release(a, mark);
    return s;
}
