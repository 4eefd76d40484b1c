/* See serve_config.h. The table below is the one place where a tunable's name, default
 * and allowed range live; the struct fields are filled from it. */
#include "serve_config.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *key;
    size_t offset;
    int64_t def, min, max;
} int_tunable;

#define T(field, def, min, max) {#field, offsetof(mm_serve_config, field), def, min, max}
static const int_tunable INT_TUNABLES[] = {
    T(threads, 0, 0, 1024),
    T(kv_blocks, 1024, 1, 1 << 24),
    T(kv_block_size, 16, 16, 16), /* fixed by the design: one block table serves all stages */
    T(max_batch_tokens, 256, 1, 1 << 20),
    T(max_batch_seqs, 64, 1, 4096),
    T(max_queue, 256, 1, 1 << 20),
    T(max_new_tokens, 256, 1, 1 << 20),
    T(max_images, 4, 0, 64),
    T(max_receive_mb, 64, 1, 2047),
    T(max_stop_strings, 8, 0, 64),
    T(stage_timeout_ms, 60000, 100, 1 << 30),
    T(fail_exit_ms, 2000, 0, 1 << 30),
    T(stages, 1, 1, MM_MAX_STAGES),
    T(encoders, 1, 0, 256),
    T(decoders, 1, 0, 256),
    T(worker_threads, 0, 0, 1024),
    T(restart_delay_ms, 1000, 0, 1 << 30),
    T(pool_heartbeat_ms, 500, 10, 60000),
    T(pool_liveness, 4, 2, 1000),
    T(pool_job_timeout_ms, 600000, 100, 1 << 30),
    T(pool_max_message_mb, 64, 1, 2047),
    T(embed_cache_mb, 256, 0, 1 << 20),
    T(image_steps, 50, 1, 1000),
    T(http_max_body_mb, 96, 1, 2047),
    T(http_max_connections, 256, 1, 65536),
};
#undef T

typedef struct {
    const char *key;
    size_t offset, cap;
    const char *def;
} str_tunable;

static const str_tunable STR_TUNABLES[] = {
    {"model", offsetof(mm_serve_config, model), sizeof(((mm_serve_config *)0)->model), "assets/tiny"},
    {"listen", offsetof(mm_serve_config, listen), sizeof(((mm_serve_config *)0)->listen), "127.0.0.1:50051"},
    {"backend", offsetof(mm_serve_config, backend), sizeof(((mm_serve_config *)0)->backend), "cpu"},
    {"kv_dtype", offsetof(mm_serve_config, kv_dtype), sizeof(((mm_serve_config *)0)->kv_dtype), "auto"},
    {"hostfile", offsetof(mm_serve_config, hostfile), sizeof(((mm_serve_config *)0)->hostfile), ""},
    {"encode_bind", offsetof(mm_serve_config, encode_bind), sizeof(((mm_serve_config *)0)->encode_bind), "tcp://127.0.0.1:50052"},
    {"decode_bind", offsetof(mm_serve_config, decode_bind), sizeof(((mm_serve_config *)0)->decode_bind), "tcp://127.0.0.1:50053"},
    {"metrics_listen", offsetof(mm_serve_config, metrics_listen), sizeof(((mm_serve_config *)0)->metrics_listen), "127.0.0.1:9464"},
    {"http_listen", offsetof(mm_serve_config, http_listen), sizeof(((mm_serve_config *)0)->http_listen), "127.0.0.1:8000"},
    {"served_model_name", offsetof(mm_serve_config, served_model_name), sizeof(((mm_serve_config *)0)->served_model_name), ""},
};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

void mm_serve_config_defaults(mm_serve_config *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_OF(INT_TUNABLES); i++)
        *(int32_t *)((char *)c + INT_TUNABLES[i].offset) = (int32_t)INT_TUNABLES[i].def;
    for (size_t i = 0; i < N_OF(STR_TUNABLES); i++)
        snprintf((char *)c + STR_TUNABLES[i].offset, STR_TUNABLES[i].cap, "%s", STR_TUNABLES[i].def);
}

static mm_status load_key(const char *path, const char *key, json_t *v, mm_serve_config *c) {
    for (size_t i = 0; i < N_OF(INT_TUNABLES); i++) {
        const int_tunable *t = &INT_TUNABLES[i];
        if (strcmp(key, t->key)) continue;
        if (!json_is_integer(v)) return MM_ERROR(MM_ERR_FORMAT, "%s: \"%s\" must be an integer", path, key);
        json_int_t x = json_integer_value(v);
        if (x < t->min || x > t->max)
            return MM_ERROR(MM_ERR_INVALID, "%s: \"%s\" = %lld outside [%lld, %lld]", path, key, (long long)x,
                            (long long)t->min, (long long)t->max);
        *(int32_t *)((char *)c + t->offset) = (int32_t)x;
        return MM_OK;
    }
    for (size_t i = 0; i < N_OF(STR_TUNABLES); i++) {
        const str_tunable *t = &STR_TUNABLES[i];
        if (strcmp(key, t->key)) continue;
        if (!json_is_string(v)) return MM_ERROR(MM_ERR_FORMAT, "%s: \"%s\" must be a string", path, key);
        if (strlen(json_string_value(v)) >= t->cap)
            return MM_ERROR(MM_ERR_INVALID, "%s: \"%s\" is longer than %zu bytes", path, key, t->cap - 1);
        const char *sv = json_string_value(v);
        if (!strcmp(key, "kv_dtype") && strcmp(sv, "auto") && strcmp(sv, "f32") && strcmp(sv, "bf16"))
            return MM_ERROR(MM_ERR_INVALID, "%s: \"kv_dtype\" = \"%s\" (auto, f32, bf16)", path, sv);
        snprintf((char *)c + t->offset, t->cap, "%s", json_string_value(v));
        return MM_OK;
    }
    if (!strcmp(key, "stage_layers")) {
        if (!json_is_array(v) || json_array_size(v) > MM_MAX_STAGES)
            return MM_ERROR(MM_ERR_FORMAT, "%s: \"stage_layers\" must be an array of at most %d integers", path,
                            MM_MAX_STAGES);
        c->n_stage_layers = (int32_t)json_array_size(v);
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > 100000)
                return MM_ERROR(MM_ERR_FORMAT, "%s: \"stage_layers\"[%zu] must be a layer count", path, i);
            c->stage_layers[i] = (int32_t)json_integer_value(e);
        }
        return MM_OK;
    }
    if (key[0] == '_') return MM_OK; /* comments: "_note": "..." */
    return MM_ERROR(MM_ERR_INVALID, "%s: unknown key \"%s\"", path, key);
}

mm_status mm_serve_config_load(const char *path, mm_serve_config *c) {
    mm_serve_config_defaults(c);
    if (!path) return MM_OK;
    json_error_t err;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!root) return MM_ERROR(MM_ERR_FORMAT, "%s:%d:%d: %s", path, err.line, err.column, err.text);
    mm_status s = MM_OK;
    if (!json_is_object(root)) s = MM_ERROR(MM_ERR_FORMAT, "%s: the config must be a JSON object", path);
    const char *key;
    json_t *v;
    if (s == MM_OK)
        json_object_foreach(root, key, v) {
            s = load_key(path, key, v, c);
            if (s != MM_OK) break;
        }
    json_decref(root);
    return s;
}

mm_status mm_serve_split_layers(const mm_serve_config *c, int32_t n_layers, int32_t n_stages, int32_t *begin,
                                int32_t *end) {
    if (n_stages < 1 || n_stages > MM_MAX_STAGES)
        return MM_ERROR(MM_ERR_INVALID, "%d pipeline stages (1..%d)", n_stages, MM_MAX_STAGES);
    if (n_stages > n_layers)
        return MM_ERROR(MM_ERR_INVALID, "%d stages for a model of %d layers", n_stages, n_layers);
    if (c->n_stage_layers) {
        if (c->n_stage_layers != n_stages)
            return MM_ERROR(MM_ERR_INVALID, "stage_layers names %d stages, the job has %d", c->n_stage_layers,
                            n_stages);
        int32_t a = 0;
        for (int32_t k = 0; k < n_stages; k++) {
            if (c->stage_layers[k] < 1) return MM_ERROR(MM_ERR_INVALID, "stage_layers[%d] must be >= 1", k);
            begin[k] = a, a += c->stage_layers[k], end[k] = a;
        }
        if (a != n_layers)
            return MM_ERROR(MM_ERR_INVALID, "stage_layers sum to %d, the model has %d layers", a, n_layers);
        return MM_OK;
    }
    int32_t base = n_layers / n_stages, extra = n_layers % n_stages, a = 0;
    for (int32_t k = 0; k < n_stages; k++) {
        begin[k] = a, a += base + (k < extra), end[k] = a;
    }
    return MM_OK;
}
