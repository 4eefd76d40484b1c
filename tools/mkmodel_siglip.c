/* mm-mkmodel's SigLIP writer: a random-weight SiglipVisionModel checkpoint with the
 * shapes of google/siglip-so400m-patch14-384 (hidden 1152, MLP 4304, 27 layers, 16
 * heads, 384 px, patch 14), for bench/vision_cpu. Only what model/siglip.c reads is
 * written (no post_layernorm or pooling head). Deterministic from the seed. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"
#include "tools/mkmodel.h"

enum { HIDDEN = 1152, INTER = 4304, LAYERS = 27, HEADS = 16, IMAGE = 384, PATCH = 14 };

static int write_json(const char *dir, const char *name, json_t *j) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int rc = j ? json_dump_file(j, path, JSON_INDENT(2) | JSON_SORT_KEYS) : -1;
    json_decref(j);
    if (rc) fprintf(stderr, "mm-mkmodel: cannot write %s\n", path);
    return rc;
}

int mkmodel_siglip_write(const char *dir, mm_dtype dt, int layers, uint64_t seed) {
    if (layers <= 0) layers = LAYERS;
    const int grid = IMAGE / PATCH;
    if (write_json(dir, "config.json",
                   json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f}", "architectures",
                             "SiglipVisionModel", "model_type", "siglip_vision_model", "hidden_size", HIDDEN,
                             "intermediate_size", INTER, "num_hidden_layers", layers, "num_attention_heads", HEADS,
                             "num_channels", 3, "image_size", IMAGE, "patch_size", PATCH, "hidden_act",
                             "gelu_pytorch_tanh", "layer_norm_eps", 1e-6)) ||
        write_json(dir, "preprocessor_config.json",
                   json_pack("{s:s, s:b, s:b, s:b, s:i, s:f, s:[f,f,f], s:[f,f,f], s:{s:i, s:i}}", "image_processor_type",
                             "SiglipImageProcessor", "do_resize", 1, "do_rescale", 1, "do_normalize", 1, "resample", 3,
                             "rescale_factor", 1.0 / 255.0, "image_mean", 0.5, 0.5, 0.5, "image_std", 0.5, 0.5, 0.5,
                             "size", "height", IMAGE, "width", IMAGE)))
        return -1;
    /* names and shapes, in module order */
    int n = 3 + 16 * layers;
    mm_st_write_tensor *t = calloc((size_t)n, sizeof *t);
    char (*names)[128] = calloc((size_t)n, sizeof *names);
    int *is_norm = calloc((size_t)n, sizeof *is_norm);
    if (!t || !names || !is_norm) return -1;
    int k = 0;
#define T(norm, r, c, ...)                                                                         \
    do {                                                                                           \
        snprintf(names[k], sizeof names[k], __VA_ARGS__);                                          \
        t[k] = (mm_st_write_tensor){names[k], dt, (c) ? 2 : 1, {r, c}, NULL};                      \
        is_norm[k++] = norm;                                                                       \
    } while (0)
    T(0, HIDDEN, 3 * PATCH * PATCH, "vision_model.embeddings.patch_embedding.weight");
    t[0].ndim = 4, t[0].shape[1] = 3, t[0].shape[2] = PATCH, t[0].shape[3] = PATCH;
    T(0, HIDDEN, 0, "vision_model.embeddings.patch_embedding.bias");
    T(0, grid * grid, HIDDEN, "vision_model.embeddings.position_embedding.weight");
    for (int l = 0; l < layers; l++) {
        const char *p = "vision_model.encoder.layers";
        T(1, HIDDEN, 0, "%s.%d.layer_norm1.weight", p, l);
        T(0, HIDDEN, 0, "%s.%d.layer_norm1.bias", p, l);
        const char *proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int j = 0; j < 4; j++) {
            T(0, HIDDEN, HIDDEN, "%s.%d.self_attn.%s.weight", p, l, proj[j]);
            T(0, HIDDEN, 0, "%s.%d.self_attn.%s.bias", p, l, proj[j]);
        }
        T(1, HIDDEN, 0, "%s.%d.layer_norm2.weight", p, l);
        T(0, HIDDEN, 0, "%s.%d.layer_norm2.bias", p, l);
        T(0, INTER, HIDDEN, "%s.%d.mlp.fc1.weight", p, l);
        T(0, INTER, 0, "%s.%d.mlp.fc1.bias", p, l);
        T(0, HIDDEN, INTER, "%s.%d.mlp.fc2.weight", p, l);
        T(0, HIDDEN, 0, "%s.%d.mlp.fc2.bias", p, l);
    }
#undef T
    uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 0x5151ull;
    int rc = 0;
    for (int i = 0; i < k && !rc; i++) {
        int64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= t[i].shape[d];
        void *data = malloc((size_t)numel * mm_dtype_size(dt));
        if (!data) rc = -1;
        else fill(data, dt, numel, is_norm[i], &rng);
        t[i].data = data;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!rc && mm_safetensors_write(path, t, (size_t)k) != MM_OK) {
        fprintf(stderr, "mm-mkmodel: %s: %s\n", path, mm_error_last());
        rc = -1;
    }
    for (int i = 0; i < k; i++) free((void *)t[i].data);
    free(t), free(names), free(is_norm);
    return rc;
}
