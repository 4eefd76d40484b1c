/* SigLIP vision tower: config and preprocessor parsing, weight loading, the encoder
 * forward pass and MetaMorph's token reduction (see siglip.h). Calls backend ops only;
 * activations live in backend memory, inputs and outputs in host memory. */
#include "siglip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"

/* ---------------------------------------------------------------- config */

static mm_status config_load(const char *dir, mm_siglip_config *c) {
    char file[4096];
    snprintf(file, sizeof file, "%s/config.json", dir);
    mm_json *root;
    CHECK(mm_json_load(file, &root));
    mm_status s = MM_OK;
    const mm_json *vc = root;
    const char *model_type = NULL, *act = NULL;
    CHECK_GOTO(mm_json_str(root, file, "model_type", "siglip_vision_model", &model_type), s, out);
    if (!strcmp(model_type, "siglip")) { /* a whole SiglipModel: its vision half */
        vc = mm_json_get(root, "vision_config");
        if (!vc) {
            s = MM_ERROR(MM_ERR_FORMAT, "%s: model_type siglip without vision_config", file);
            goto out;
        }
    } else if (strcmp(model_type, "siglip_vision_model")) {
        s = MM_ERROR(MM_ERR_UNSUPPORTED, "%s: model_type '%s' is not SigLIP (siglip, siglip_vision_model)", file, model_type);
        goto out;
    }
    /* defaults: SiglipVisionConfig's */
    int32_t hidden, inter, layers, heads, chans, size, patch;
    double eps;
    CHECK_GOTO(mm_json_i32_in(vc, file, "hidden_size", 768, 1, 1 << 20, &hidden), s, out);
    CHECK_GOTO(mm_json_i32_in(vc, file, "intermediate_size", 3072, 1, 1 << 22, &inter), s, out);
    CHECK_GOTO(mm_json_i32_in(vc, file, "num_hidden_layers", 12, 1, 4096, &layers), s, out);
    CHECK_GOTO(mm_json_i32_in(vc, file, "num_attention_heads", 12, 1, 4096, &heads), s, out);
    CHECK_GOTO(mm_json_i32_in(vc, file, "num_channels", 3, 1, 4096, &chans), s, out);
    CHECK_GOTO(mm_json_i32_in(vc, file, "image_size", 224, 1, 8192, &size), s, out);
    CHECK_GOTO(mm_json_i32_in(vc, file, "patch_size", 16, 1, 8192, &patch), s, out);
    CHECK_GOTO(mm_json_num_in(vc, file, "layer_norm_eps", 1e-6, 0, 1, 0, &eps), s, out);
    CHECK_GOTO(mm_json_str(vc, file, "hidden_act", "gelu_pytorch_tanh", &act), s, out);
    if (hidden % heads) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: key 'hidden_size' = %d is not a multiple of num_attention_heads %d", file,
                     hidden, heads);
        goto out;
    }
    if (size < patch) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: key 'patch_size' = %d is larger than image_size %d", file, patch, size);
        goto out;
    }
    if (chans != 3) {
        s = MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key 'num_channels' = %d is not supported (RGB only: 3)", file, chans);
        goto out;
    }
    if (strcmp(act, "gelu_pytorch_tanh") && strcmp(act, "gelu")) {
        s = MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key 'hidden_act' = \"%s\" is not supported (gelu_pytorch_tanh, gelu)", file, act);
        goto out;
    }
    c->hidden = hidden, c->intermediate = inter, c->n_layers = layers;
    c->n_heads = heads, c->head_dim = hidden / heads, c->n_channels = chans;
    c->image_size = size, c->patch_size = patch, c->grid = size / patch;
    c->eps = (float)eps, c->gelu_tanh = !strcmp(act, "gelu_pytorch_tanh");
out:
    mm_json_free(root);
    return s;
}

/* A per-channel value: one number (all channels) or three. */
static mm_status triple(const mm_json *root, const char *file, const char *key, float def, float v[3]) {
    double d[3] = {def, def, def};
    int n = 0;
    CHECK(mm_json_num_list(root, file, key, d, 3, &n));
    if (n == 1) d[1] = d[2] = d[0];
    else if (n != 0 && n != 3) return MM_ERROR(MM_ERR_FORMAT, "%s: %s must have 1 or 3 values, not %d", file, key, n);
    for (int i = 0; i < 3; i++) v[i] = (float)d[i];
    return MM_OK;
}

static mm_status preproc_load(const char *dir, const mm_siglip_config *c, mm_siglip_preproc *pp) {
    *pp = (mm_siglip_preproc){1, 1, 1, c->image_size, c->image_size, 3, 1.0 / 255.0, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};
    char file[4096];
    snprintf(file, sizeof file, "%s/preprocessor_config.json", dir);
    FILE *f = fopen(file, "r");
    if (!f) return MM_OK; /* SiglipImageProcessor defaults at the model's size */
    fclose(f);
    mm_json *root;
    CHECK(mm_json_load(file, &root));
    mm_status s = MM_OK;
    int64_t resample, h = pp->height, w = pp->width;
    CHECK_GOTO(mm_json_bool(root, file, "do_resize", 1, &pp->do_resize), s, out);
    CHECK_GOTO(mm_json_bool(root, file, "do_rescale", 1, &pp->do_rescale), s, out);
    CHECK_GOTO(mm_json_bool(root, file, "do_normalize", 1, &pp->do_normalize), s, out);
    CHECK_GOTO(mm_json_int_in(root, file, "resample", 3, 0, 5, &resample), s, out);
    CHECK_GOTO(mm_json_num_in(root, file, "rescale_factor", 1.0 / 255.0, 0, 1e6, 1, &pp->rescale_factor), s, out);
    if (mm_json_has(root, "size")) {
        const mm_json *size = mm_json_get(root, "size");
        char shown[MM_JSON_SHOWN_CAP];
        if (!mm_json_is_object(size)) {
            s = MM_ERROR(MM_ERR_FORMAT, "%s: key 'size' = %s must be {\"height\", \"width\"}", file,
                         mm_json_show(size, shown, sizeof shown));
            goto out;
        }
        CHECK_GOTO(mm_json_int_in(size, file, "height", -1, 1, 8192, &h), s, out);
        CHECK_GOTO(mm_json_int_in(size, file, "width", -1, 1, 8192, &w), s, out);
    }
    CHECK_GOTO(triple(root, file, "image_mean", 0.5f, pp->mean), s, out);
    CHECK_GOTO(triple(root, file, "image_std", 0.5f, pp->std), s, out);
    if (h != c->image_size || w != c->image_size || !pp->do_resize) {
        s = MM_ERROR(MM_ERR_UNSUPPORTED, "%s: size %lldx%lld (resize %d) must be the model's %dx%d", file,
                     (long long)h, (long long)w, pp->do_resize, c->image_size, c->image_size);
        goto out;
    }
    if (pp->std[0] == 0 || pp->std[1] == 0 || pp->std[2] == 0) {
        s = MM_ERROR(MM_ERR_FORMAT, "%s: image_std has a zero", file);
        goto out;
    }
    if (resample != 2 && resample != 3) {
        s = MM_ERROR(MM_ERR_UNSUPPORTED, "%s: resample %lld (2 bilinear, 3 bicubic)", file, (long long)resample);
        goto out;
    }
    pp->height = (int32_t)h, pp->width = (int32_t)w, pp->resample = (int)resample;
out:
    mm_json_free(root);
    return s;
}

/* ---------------------------------------------------------------- weights */

static mm_status load_weight(mm_siglip *m, const char *name, int64_t rows, int64_t cols, mm_weight_use use,
                             mm_tensor *out) {
    const mm_st_tensor *t;
    int64_t shape[2] = {rows, cols};
    CHECK(mm_safetensors_get(m->st, name, use == MM_WEIGHT_VECTOR ? 1 : 2, shape, &t));
    return m->be->ops->weight_load(m->be, t, use, out);
}

static mm_status load_layer(mm_siglip *m, int32_t l, mm_siglip_layer *L) {
    const mm_siglip_config *c = &m->cfg;
    char name[256];
#define W(field, path, rows, cols, use)                                                            \
    snprintf(name, sizeof name, "vision_model.encoder.layers.%d." path, l);                        \
    CHECK(load_weight(m, name, rows, cols, use, &L->field))
    W(layer_norm1_w, "layer_norm1.weight", c->hidden, 0, MM_WEIGHT_VECTOR);
    W(layer_norm1_b, "layer_norm1.bias", c->hidden, 0, MM_WEIGHT_VECTOR);
    W(q_proj_w, "self_attn.q_proj.weight", c->hidden, c->hidden, MM_WEIGHT_MATMUL);
    W(q_proj_b, "self_attn.q_proj.bias", c->hidden, 0, MM_WEIGHT_VECTOR);
    W(k_proj_w, "self_attn.k_proj.weight", c->hidden, c->hidden, MM_WEIGHT_MATMUL);
    W(k_proj_b, "self_attn.k_proj.bias", c->hidden, 0, MM_WEIGHT_VECTOR);
    W(v_proj_w, "self_attn.v_proj.weight", c->hidden, c->hidden, MM_WEIGHT_MATMUL);
    W(v_proj_b, "self_attn.v_proj.bias", c->hidden, 0, MM_WEIGHT_VECTOR);
    W(out_proj_w, "self_attn.out_proj.weight", c->hidden, c->hidden, MM_WEIGHT_MATMUL);
    W(out_proj_b, "self_attn.out_proj.bias", c->hidden, 0, MM_WEIGHT_VECTOR);
    W(layer_norm2_w, "layer_norm2.weight", c->hidden, 0, MM_WEIGHT_VECTOR);
    W(layer_norm2_b, "layer_norm2.bias", c->hidden, 0, MM_WEIGHT_VECTOR);
    W(fc1_w, "mlp.fc1.weight", c->intermediate, c->hidden, MM_WEIGHT_MATMUL);
    W(fc1_b, "mlp.fc1.bias", c->intermediate, 0, MM_WEIGHT_VECTOR);
    W(fc2_w, "mlp.fc2.weight", c->hidden, c->intermediate, MM_WEIGHT_MATMUL);
    W(fc2_b, "mlp.fc2.bias", c->hidden, 0, MM_WEIGHT_VECTOR);
#undef W
    return MM_OK;
}

static void release(mm_backend *be, mm_tensor *t) {
    if (t->data) be->ops->weight_release(be, t);
}

static void release_layer(mm_backend *be, mm_siglip_layer *L) {
    mm_tensor *all = (mm_tensor *)L; /* the struct is only mm_tensor fields */
    for (size_t i = 0; i < sizeof *L / sizeof(mm_tensor); i++) release(be, &all[i]);
}

/* The conv weight [hidden, C, p, p] seen as the matrix [hidden, C*p*p] of patchify + matmul. */
static mm_status load_patch_embedding(mm_siglip *m) {
    const mm_siglip_config *c = &m->cfg;
    const mm_st_tensor *t;
    int64_t shape[4] = {c->hidden, c->n_channels, c->patch_size, c->patch_size};
    CHECK(mm_safetensors_get(m->st, "vision_model.embeddings.patch_embedding.weight", 4, shape, &t));
    mm_st_tensor mat = *t;
    mat.ndim = 2;
    mat.shape[1] = (int64_t)c->n_channels * c->patch_size * c->patch_size;
    CHECK(m->be->ops->weight_load(m->be, &mat, MM_WEIGHT_MATMUL, &m->patch_embedding_w));
    CHECK(load_weight(m, "vision_model.embeddings.patch_embedding.bias", c->hidden, 0, MM_WEIGHT_VECTOR,
                      &m->patch_embedding_b));
    /* position embeddings as f32 rows 0..N-1, gathered once through the embed op */
    int64_t N = (int64_t)c->grid * c->grid;
    mm_tensor table;
    CHECK(load_weight(m, "vision_model.embeddings.position_embedding.weight", N, c->hidden, MM_WEIGHT_TABLE, &table));
    int32_t *ids = malloc((size_t)N * sizeof *ids);
    m->position_embedding = m->be->ops->alloc(m->be, (size_t)(N * c->hidden) * sizeof(float));
    mm_status s = ids && m->position_embedding ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "SigLIP position embeddings");
    for (int64_t i = 0; s == MM_OK && i < N; i++) ids[i] = (int32_t)i;
    if (s == MM_OK) s = m->be->ops->embed(m->be, &table, ids, N, m->position_embedding);
    free(ids);
    m->be->ops->weight_release(m->be, &table);
    return s;
}

mm_status mm_siglip_load(const char *dir, mm_backend *be, mm_siglip **out) {
    mm_siglip *m = calloc(1, sizeof *m);
    CHECK(CHECK_ALLOC(m));
    m->be = be;
    mm_status s;
    CHECK_GOTO(config_load(dir, &m->cfg), s, fail);
    CHECK_GOTO(preproc_load(dir, &m->cfg, &m->pp), s, fail);
    CHECK_GOTO(mm_safetensors_open(dir, &m->st), s, fail);
    CHECK_GOTO(load_patch_embedding(m), s, fail);
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers);
    CHECK_GOTO(CHECK_ALLOC(m->layers), s, fail);
    for (int32_t l = 0; l < m->cfg.n_layers; l++) CHECK_GOTO(load_layer(m, l, &m->layers[l]), s, fail);
    m->run_layers = m->cfg.n_layers;
    *out = m;
    return MM_OK;
fail:
    mm_siglip_free(m);
    return s;
}

void mm_siglip_free(mm_siglip *m) {
    if (!m) return;
    if (m->layers)
        for (int32_t l = 0; l < m->cfg.n_layers; l++) release_layer(m->be, &m->layers[l]);
    free(m->layers);
    release(m->be, &m->patch_embedding_w);
    release(m->be, &m->patch_embedding_b);
    if (m->position_embedding) m->be->ops->dealloc(m->be, m->position_embedding);
    mm_safetensors_close(m->st);
    free(m);
}

/* ---------------------------------------------------------------- preprocessing */

mm_status mm_siglip_preprocess(const mm_siglip_preproc *pp, const mm_image *img, float *pixels) {
    mm_image sized = {0};
    const mm_image *src = img;
    if (img->width != pp->width || img->height != pp->height) {
        if (!pp->do_resize)
            return MM_ERROR(MM_ERR_INVALID, "image is %dx%d, the model takes %dx%d", img->width, img->height,
                            pp->width, pp->height);
        CHECK(mm_image_resize(img, pp->width, pp->height, pp->resample, &sized));
        src = &sized;
    }
    int64_t hw = (int64_t)pp->width * pp->height;
    for (int64_t i = 0; i < hw; i++)
        for (int c = 0; c < 3; c++) {
            /* transformers: u8 -> f64 * factor -> f32; then (v - mean) / std in f32 */
            float v = pp->do_rescale ? (float)((double)src->rgb[i * 3 + c] * pp->rescale_factor) : (float)src->rgb[i * 3 + c];
            if (pp->do_normalize) v = (v - pp->mean[c]) / pp->std[c];
            pixels[c * hw + i] = v;
        }
    mm_image_free(&sized);
    return MM_OK;
}

/* ---------------------------------------------------------------- forward */

typedef struct {
    float *pix;  /* [B, C, S, S] */
    float *x;    /* [M, hidden] residual stream, M = B * N */
    float *xn;   /* [M, max(C*p*p, hidden)] patches, then normed input */
    float *q, *k, *v, *attn; /* [M, hidden] */
    float *mlp;  /* [M, intermediate] */
    float *red;  /* [B, n_tokens, hidden] */
} siglip_buffers;

static void buffers_free(mm_backend *be, siglip_buffers *b) {
    float *all[] = {b->pix, b->x, b->xn, b->q, b->k, b->v, b->attn, b->mlp, b->red};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i]) be->ops->dealloc(be, all[i]);
}

static mm_status buffers_alloc(mm_siglip *m, int64_t B, int32_t n_tokens, siglip_buffers *b) {
    const mm_siglip_config *c = &m->cfg;
    mm_backend *be = m->be;
    int64_t M = B * c->grid * c->grid, K = (int64_t)c->n_channels * c->patch_size * c->patch_size;
    size_t f = sizeof(float);
    memset(b, 0, sizeof *b);
    b->pix = be->ops->alloc(be, (size_t)(B * c->n_channels * c->image_size * c->image_size) * f);
    b->x = be->ops->alloc(be, (size_t)(M * c->hidden) * f);
    b->xn = be->ops->alloc(be, (size_t)(M * (K > c->hidden ? K : c->hidden)) * f);
    b->q = be->ops->alloc(be, (size_t)(M * c->hidden) * f);
    b->k = be->ops->alloc(be, (size_t)(M * c->hidden) * f);
    b->v = be->ops->alloc(be, (size_t)(M * c->hidden) * f);
    b->attn = be->ops->alloc(be, (size_t)(M * c->hidden) * f);
    b->mlp = be->ops->alloc(be, (size_t)(M * c->intermediate) * f);
    b->red = be->ops->alloc(be, (size_t)(B * (n_tokens > 0 ? n_tokens : 1) * c->hidden) * f);
    if (!b->pix || !b->x || !b->xn || !b->q || !b->k || !b->v || !b->attn || !b->mlp || !b->red) {
        buffers_free(be, b);
        return MM_ERROR(MM_ERR_NOMEM, "SigLIP activations for %lld images", (long long)B);
    }
    return MM_OK;
}

/* y[M, N] = x W^T + b */
static mm_status linear(mm_backend *be, const mm_tensor *w, const mm_tensor *bias, const float *x, float *y, int64_t M) {
    CHECK(be->ops->matmul(be, w, x, y, M));
    return be->ops->add_bias(be, y, bias->data, M, w->shape[0]);
}

static mm_status encoder_layer(mm_siglip *m, const mm_siglip_layer *L, int64_t B, siglip_buffers *b) {
    mm_backend *be = m->be;
    const mm_backend_ops *op = be->ops;
    const mm_siglip_config *c = &m->cfg;
    int64_t N = (int64_t)c->grid * c->grid, M = B * N, D = c->hidden;
    /* self-attention block (pre-LN) */
    CHECK(op->layernorm(be, b->x, L->layer_norm1_w.data, L->layer_norm1_b.data, b->xn, M, D, c->eps));
    CHECK(linear(be, &L->q_proj_w, &L->q_proj_b, b->xn, b->q, M));
    CHECK(linear(be, &L->k_proj_w, &L->k_proj_b, b->xn, b->k, M));
    CHECK(linear(be, &L->v_proj_w, &L->v_proj_b, b->xn, b->v, M));
    CHECK(op->attention_dense(be, b->q, b->k, b->v, B, N, N, c->n_heads, c->head_dim,
                              1.0f / sqrtf((float)c->head_dim), b->attn));
    CHECK(linear(be, &L->out_proj_w, &L->out_proj_b, b->attn, b->q, M));
    CHECK(op->add(be, b->x, b->q, M * D));
    /* MLP block */
    CHECK(op->layernorm(be, b->x, L->layer_norm2_w.data, L->layer_norm2_b.data, b->xn, M, D, c->eps));
    CHECK(linear(be, &L->fc1_w, &L->fc1_b, b->xn, b->mlp, M));
    CHECK(op->gelu(be, b->mlp, M * c->intermediate, c->gelu_tanh));
    CHECK(linear(be, &L->fc2_w, &L->fc2_b, b->mlp, b->q, M));
    CHECK(op->add(be, b->x, b->q, M * D));
    return MM_OK;
}

mm_status mm_siglip_select_layer(mm_siglip *m, int32_t select_layer) {
    int32_t L = m->cfg.n_layers, idx = select_layer < 0 ? L + 1 + select_layer : select_layer;
    if (idx < 0 || idx > L)
        return MM_ERROR(MM_ERR_INVALID, "SigLIP select layer %d: the tower has hidden states 0..%d (-%d..-1)",
                        select_layer, L, L + 1);
    m->run_layers = idx;
    return MM_OK;
}

mm_status mm_siglip_encode(mm_siglip *m, const float *pixels, int64_t B, int32_t n_tokens, float *features,
                           float *tokens) {
    const mm_siglip_config *c = &m->cfg;
    mm_backend *be = m->be;
    const mm_backend_ops *op = be->ops;
    int32_t side = (int32_t)lround(sqrt((double)(n_tokens > 0 ? n_tokens : 0)));
    if (B <= 0) return MM_ERROR(MM_ERR_INVALID, "SigLIP: no images");
    if (tokens && (n_tokens <= 0 || side * side != n_tokens))
        return MM_ERROR(MM_ERR_INVALID, "SigLIP: %d visual tokens is not a square grid", n_tokens);
    int64_t N = (int64_t)c->grid * c->grid, M = B * N, D = c->hidden, S = c->image_size;
    siglip_buffers b;
    CHECK(buffers_alloc(m, B, n_tokens, &b));
    mm_status s;
    CHECK_GOTO(op->upload(be, b.pix, pixels, (size_t)(B * c->n_channels * S * S) * sizeof(float)), s, out);
    /* embeddings: patch conv as patchify + matmul, plus learned positions */
    CHECK_GOTO(op->patchify(be, b.pix, b.xn, B, c->n_channels, S, S, c->patch_size), s, out);
    CHECK_GOTO(linear(be, &m->patch_embedding_w, &m->patch_embedding_b, b.xn, b.x, M), s, out);
    for (int64_t i = 0; i < B; i++) CHECK_GOTO(op->add(be, b.x + i * N * D, m->position_embedding, N * D), s, out);
    for (int32_t l = 0; l < m->run_layers; l++) CHECK_GOTO(encoder_layer(m, &m->layers[l], B, &b), s, out);
    if (features) CHECK_GOTO(op->download(be, features, b.x, (size_t)(M * D) * sizeof(float)), s, out);
    if (tokens) {
        const float *grid = b.x;
        if (n_tokens != N) {
            CHECK_GOTO(op->resize_bilinear(be, b.x, b.red, B, c->grid, c->grid, D, side, side), s, out);
            grid = b.red;
        }
        CHECK_GOTO(op->l2norm(be, grid, b.red, B * n_tokens, D, 1e-12f), s, out);
        CHECK_GOTO(op->download(be, tokens, b.red, (size_t)(B * n_tokens * D) * sizeof(float)), s, out);
    }
out:
    buffers_free(be, &b);
    return s;
}

mm_status mm_siglip_encode_image_bytes(mm_siglip *m, const void *data, size_t len, const mm_image_limits *lim,
                                       int32_t n_tokens, float *pixels, float *tokens) {
    mm_image img;
    CHECK(mm_image_decode(data, len, lim, &img));
    mm_status s = mm_siglip_preprocess(&m->pp, &img, pixels);
    mm_image_free(&img);
    CHECK(s);
    return mm_siglip_encode(m, pixels, 1, n_tokens, NULL, tokens);
}
