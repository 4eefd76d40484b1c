/* The visual-token adapter (see adapter.h). Maths only. */
#include "adapter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mm_status config_parse(const mm_json *root, const char *file, void *cfg) {
    mm_adapter_config *c = cfg;
    const char *mode;
    CHECK(mm_json_str(root, file, "mode", "mlp", &mode));
    if (strcmp(mode, "mlp"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: adapter mode '%s' is not supported (only 'mlp')", file, mode);
    CHECK(mm_json_i32_in(root, file, "input_dim", 1152, 1, 1 << 20, &c->input_dim));
    CHECK(mm_json_i32_in(root, file, "hidden_dim", 4096, 1, 1 << 20, &c->hidden_dim));
    CHECK(mm_json_i32_in(root, file, "output_dim", 768, 1, 1 << 20, &c->output_dim));
    CHECK(mm_json_i32_in(root, file, "num_layers", 6, 1, 64, &c->num_layers));
    return MM_OK;
}

mm_status mm_adapter_config_load(const char *dir, mm_adapter_config *cfg) {
    return mm_json_load_parsed(dir, "config.json", config_parse, cfg);
}

mm_status mm_adapter_load(const char *dir, mm_backend *be, mm_adapter **out) {
    if (!be->ops->activation) return MM_ERROR(MM_ERR_UNSUPPORTED, "backend '%s' has no activation op", be->ops->name);
    mm_adapter *a = calloc(1, sizeof *a);
    CHECK(CHECK_ALLOC(a));
    a->be = be;
    mm_arena_init(&a->arena, be);
    mm_status s;
    char path[4096], name[64];
    CHECK_GOTO(mm_adapter_config_load(dir, &a->cfg), s, fail);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_GOTO(mm_safetensors_open(path, &a->st), s, fail);
    a->loader = (mm_dn_loader){.be = be, .st = a->st};
    /* the original builds first + (num_layers - 2) middle + last layers: at least two */
    a->n_linear = a->cfg.num_layers < 2 ? 2 : a->cfg.num_layers;
    a->layers = calloc((size_t)a->n_linear, sizeof *a->layers);
    a->norms = calloc((size_t)a->n_linear, sizeof *a->norms);
    if (!a->layers || !a->norms) {
        s = MM_ERROR(MM_ERR_NOMEM, "adapter layers");
        goto fail;
    }
    for (int i = 0; i < a->n_linear; i++) {
        int64_t in = i == 0 ? a->cfg.input_dim : a->cfg.hidden_dim;
        int64_t o = i == a->n_linear - 1 ? a->cfg.output_dim : a->cfg.hidden_dim;
        snprintf(name, sizeof name, "layers.%d", i);
        CHECK_GOTO(mm_dn_load_linear(&a->loader, name, in, o, 1, &a->layers[i]), s, fail);
        snprintf(name, sizeof name, "norms.%d", i);
        CHECK_GOTO(mm_dn_load_norm(&a->loader, name, o, &a->norms[i]), s, fail);
    }
    *out = a;
    return MM_OK;
fail:
    mm_adapter_free(a);
    return s;
}

void mm_adapter_free(mm_adapter *a) {
    if (!a) return;
    mm_dn_loader_release(&a->loader);
    free(a->layers);
    free(a->norms);
    mm_arena_free(&a->arena);
    mm_safetensors_close(a->st);
    free(a);
}

mm_status mm_adapter_forward(mm_adapter *a, const float *tokens, int64_t n, float *ctx) {
    mm_backend *be = a->be;
    int64_t D = a->cfg.output_dim, Hd = a->cfg.hidden_dim;
    if (n < 1 || n > MM_ADAPTER_CONTEXT_TOKENS)
        return MM_ERROR(MM_ERR_INVALID, "adapter: %lld visual tokens (1..%d)", (long long)n, MM_ADAPTER_CONTEXT_TOKENS);
    mm_arena_reset(&a->arena);
    mm_status s = MM_OK;
    float *h0, *h1; /* [n, hidden_dim] ping-pong */
    CHECK_GOTO(mm_arena_floats(&a->arena, n * Hd, &h0), s, done);
    CHECK_GOTO(mm_arena_floats(&a->arena, n * Hd, &h1), s, done);
    const float *x = tokens;
    for (int i = 0; i < a->n_linear; i++) {
        int last = i == a->n_linear - 1;
        float *y = last ? ctx : (x == h0 ? h1 : h0);
        int64_t o = a->layers[i].out;
        CHECK_GOTO(mm_dn_linear_forward(be, &a->layers[i], x, y, n), s, done);
        CHECK_GOTO(be->ops->layernorm(be, y, (const float *)a->norms[i].w.data, (const float *)a->norms[i].b.data, y, n,
                                      o, 1e-5f), s, done);
        if (!last) CHECK_GOTO(be->ops->activation(be, y, n * o, MM_ACT_RELU), s, done);
        x = y;
    }
    /* zero padding rows n..76 */
    int64_t pad = (MM_ADAPTER_CONTEXT_TOKENS - n) * D;
    if (pad > 0) {
        float *zeros = calloc((size_t)pad, sizeof(float));
        if (!zeros) {
            s = MM_ERROR(MM_ERR_NOMEM, "adapter padding");
            goto done;
        }
        s = be->ops->upload(be, ctx + n * D, zeros, (size_t)pad * sizeof(float));
        free(zeros);
    }
done:
    mm_arena_reset(&a->arena);
    return s;
}
