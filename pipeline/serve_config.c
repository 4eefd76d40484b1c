/* See serve_config.h. The table below is the one place where a tunable's name, default
 * and allowed range live; the struct fields are filled from it. */
#include "serve_config.h"

#include "common/log.h"
#include "model/image_params.h"
#include "model/kv_cache.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *key;
    size_t offset;
    int64_t def, min, max;
    const char *doc; /* one line for --print-config and the README reference */
} int_tunable;

#define T(field, def, min, max, doc) {#field, offsetof(mm_serve_config, field), def, min, max, doc}
static const int_tunable INT_TUNABLES[] = {
    T(threads, 0, 0, 1024, "backend threads per stage, 0 = all cores"),
    T(kv_blocks, 1024, 1, 1 << 24, "KV cache blocks per stage (each stage holds its own layers)"),
    T(kv_block_size, MM_KV_BLOCK_SIZE, MM_KV_BLOCK_SIZE, MM_KV_BLOCK_SIZE,
      "tokens per KV block (fixed: one block table serves all stages)"),
    T(max_batch_tokens, 256, 1, 1 << 20, "per-step token budget (decodes + prefill chunks)"),
    T(max_batch_seqs, 64, 1, 4096, "sequences in one micro-batch at most"),
    T(max_queue, 256, 1, 1 << 20, "waiting requests at most; more get RESOURCE_EXHAUSTED"),
    T(max_new_tokens, 256, 1, 1 << 20, "new tokens when a request does not say"),
    T(max_images, 4, 0, 64, "image parts per request at most"),
    T(max_receive_mb, 64, 1, 2047, "largest gRPC request in MiB (images)"),
    T(max_stop_strings, 8, 0, 64, "stop strings per request at most"),
    T(stage_timeout_ms, 60000, 100, 1 << 30, "a step in flight longer than this takes the pipeline down"),
    T(stage_liveness_ms, 3000, 200, 600000, "the coordinator and every stage hear from each other at least every 1/5 of this (heartbeats); a peer silent this long counts as dead: NOT_SERVING, requests in flight fail UNAVAILABLE, stages whose coordinator is gone exit (longer than one half-layer block's compute: a stage beats between blocks)"),
    T(fail_exit_ms, 2000, 0, 1 << 30, "after the pipeline went down, answer NOT_SERVING this long, then exit"),
    T(stages, 1, 1, MM_MAX_STAGES, "launch.sh: pipeline stages P (mm-stage ranks)"),
    T(encoders, 1, 0, 256, "launch.sh: mm-encoder workers on this host (more may join from others)"),
    T(decoders, 1, 0, 256, "launch.sh: mm-decoder workers on this host (more may join from others)"),
    T(worker_threads, 0, 0, 1024, "launch.sh: threads per pool worker, 0 = all cores"),
    T(start_timeout_ms, 600000, 1000, 1 << 30, "launch.sh: a job whose coordinator is not serving this long after its start (MPI_Init or loading stuck on some rank) is torn down and started again"),
    T(host_max_failures, 3, 1, 1000, "launch.sh with a hostfile: after this many failed starts in a row, hosts that cannot be reached are left out and the job re-planned on the rest (degraded)"),
    T(restart_delay_ms, 1000, 0, 1 << 30, "launch.sh: first pause before restarting a dead job or worker"),
    T(pool_heartbeat_ms, 500, 10, 60000, "pool heartbeat period, both ways"),
    T(pool_liveness, 4, 2, 1000, "heartbeats missed before a worker (or the coordinator) counts as dead"),
    T(pool_job_timeout_ms, 600000, 100, 1 << 30, "a pool job unanswered this long on a live worker is sent elsewhere"),
    T(pool_max_message_mb, 64, 1, 2047, "largest pool message in MiB (an image, its tokens, a PNG)"),
    T(embed_cache_mb, 256, 0, 1 << 20, "visual tokens of recently seen images in MiB (LRU), 0 = off"),
    T(prefix_cache, 1, 0, 1, "1: automatic prefix caching, a prompt's full KV blocks seen before (images too) are reused, not recomputed; 0: off"),
    T(image_steps, MM_DECODE_DEFAULT_STEPS, 1, MM_DECODE_MAX_STEPS, "diffusion steps when a request does not say"),
    T(http_max_body_mb, 96, 1, 2047, "largest HTTP request body in MiB"),
    T(http_max_connections, 256, 1, 65536, "HTTP connections at once (one thread each)"),
    T(http2_guard, 1, 0, 1, "1: the coordinator accepts gRPC connections itself (TLS by GnuTLS) and bounds what HTTP/2 clients send; 0: gRPC's own port and TLS, no flood bounds (README, Security)"),
    T(http2_max_connections, 2048, 1, 1 << 20, "gRPC port: connections at once (each holds 32 KiB of relay buffers, 3 file descriptors)"),
    T(http2_max_connections_per_peer, 256, 1, 1 << 20, "gRPC port: connections at once from one IP address"),
    T(http2_handshake_timeout_ms, 10000, 100, 1 << 30, "gRPC port: a connection without TLS handshake and HTTP/2 preface this long is closed"),
    T(split_decode_percent, 33, 0, 100, "stage split: sampled tokens per 100 computed (output / (prompt + output)), weighs lm_head"),
    T(key_max_requests, 0, 0, 1 << 20, "with api_keys_file: requests in flight per API key at most (more: RESOURCE_EXHAUSTED / 429), 0 = no limit"),
    T(key_max_tokens, 0, 0, 1 << 30, "with api_keys_file: prompt + max_new_tokens in flight per API key at most, 0 = no limit"),
    T(log_stats_ms, 10000, 0, 3600000, "a throughput line (running, waiting, tok/s, KV use, pools) this often while busy, 0 = never"),
};
#undef T

typedef struct {
    const char *key;
    size_t offset, cap;
    const char *def;
    const char *env; /* environment variable that overrides the file, or NULL */
    const char *doc;
} str_tunable;

#define S(field, def, env, doc) {#field, offsetof(mm_serve_config, field), sizeof(((mm_serve_config *)0)->field), def, env, doc}
static const str_tunable STR_TUNABLES[] = {
    S(model, "assets/tiny", "MM_MODEL", "model root (metamorph.json) or an HF LLaMA directory"),
    S(listen, "127.0.0.1:50051", "MM_LISTEN", "gRPC API host:port"),
    S(backend, "cpu", NULL, "compute backend of the stages: cpu, cpu-ref, cuda"),
    S(kv_dtype, "auto", NULL, "KV cache type: auto (the checkpoint's, as transformers/vLLM: bf16 for bf16 weights, else f32), f32, bf16"),
    S(hostfile, "", NULL, "launch.sh: MPICH hostfile, \"\" = this host only"),
    S(encode_bind, "tcp://127.0.0.1:50052", NULL, "encoder pool endpoint (tcp://0.0.0.0:PORT for other hosts), \"\" = none"),
    S(decode_bind, "tcp://127.0.0.1:50053", NULL, "decoder pool endpoint, \"\" = none"),
    S(metrics_listen, "127.0.0.1:9464", NULL, "Prometheus /metrics, /healthz, /readyz host:port, \"\" = off"),
    S(http_listen, "127.0.0.1:8000", NULL, "OpenAI-compatible HTTP API host:port, \"\" = off"),
    S(served_model_name, "", NULL, "the model's id in the HTTP API, \"\" = the model directory's name"),
    S(tls_cert, "", NULL, "PEM certificate chain: gRPC and HTTP doors over TLS (with tls_key), \"\" = plain text"),
    S(tls_key, "", NULL, "PEM private key of tls_cert"),
    S(tls_client_ca, "", NULL, "PEM CA bundle: clients must present a certificate it signed (mutual TLS), \"\" = not asked"),
    S(api_keys_file, "", NULL, "\"NAME KEY\" lines (or NAME blake2b:HEX, see mmctl apikey): every call needs one as Bearer, SIGHUP re-reads, \"\" = open"),
    S(auth_open, "", NULL, "reachable without a key when api_keys_file is set: \"health\", \"metrics\", \"health,metrics\" or \"\""),
    S(pool_curve_secret_key, "", NULL, "key file (mmctl keygen): CURVE on both pool ports, workers need pool_authorized_keys, \"\" = plain"),
    S(pool_authorized_keys, "", NULL, "workers' CURVE public keys (\"NAME Z85\" lines): only they may join the pools"),
    S(pool_worker_key, "", NULL, "launch.sh: the key file its own pool workers present"),
    S(trace_file, "", NULL, "the scheduler's timeline (requests, steps, stage compute time) as JSON lines, for bench/trace_report.py; \"\" = off"),
    S(log_level, "info", "MM_LOG_LEVEL", "log level of every program: error, warn, info, debug"),
    S(log_format, "text", "MM_LOG_FORMAT", "log lines as text or json (time, level, prog, pid, src, msg)"),
};
#undef S

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
        if (!strcmp(key, "auth_open") && strcmp(sv, "") && strcmp(sv, "health") && strcmp(sv, "metrics") &&
            strcmp(sv, "health,metrics") && strcmp(sv, "metrics,health"))
            return MM_ERROR(MM_ERR_INVALID, "%s: \"auth_open\" = \"%s\" (\"\", health, metrics, health,metrics)", path, sv);
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
    for (size_t i = 0; s == MM_OK && i < N_OF(STR_TUNABLES); i++) { /* the environment wins over the file */
        const str_tunable *t = &STR_TUNABLES[i];
        const char *v = t->env ? getenv(t->env) : NULL;
        if (!v || !v[0]) continue;
        if (strlen(v) >= t->cap) s = MM_ERROR(MM_ERR_INVALID, "%s is longer than %zu bytes", t->env, t->cap - 1);
        else snprintf((char *)c + t->offset, t->cap, "%s", v);
    }
    if (s == MM_OK) s = mm_log_configure(c->log_level, c->log_format); /* every process that reads the config */
    return s;
}

size_t mm_serve_config_n_tunables(void) { return N_OF(STR_TUNABLES) + N_OF(INT_TUNABLES) + 1; }

/* v as JSON text into out (jansson escapes strings). */
static void json_text(json_t *v, char *out, size_t cap) {
    char *t = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    snprintf(out, cap, "%s", t ? t : "null");
    free(t);
    json_decref(v);
}

void mm_serve_config_tunable(const mm_serve_config *c, size_t i, mm_serve_tunable *out) {
    memset(out, 0, sizeof *out);
    if (i < N_OF(STR_TUNABLES)) {
        const str_tunable *t = &STR_TUNABLES[i];
        out->key = t->key, out->doc = t->doc, out->env = t->env;
        json_text(json_string((const char *)c + t->offset), out->value, sizeof out->value);
        json_text(json_string(t->def), out->def, sizeof out->def);
        return;
    }
    i -= N_OF(STR_TUNABLES);
    if (i < N_OF(INT_TUNABLES)) {
        const int_tunable *t = &INT_TUNABLES[i];
        out->key = t->key, out->doc = t->doc;
        snprintf(out->value, sizeof out->value, "%d", *(const int32_t *)((const char *)c + t->offset));
        snprintf(out->def, sizeof out->def, "%lld", (long long)t->def);
        return;
    }
    out->key = "stage_layers";
    out->doc = "whole layers per stage, e.g. [10, 6]; [] = split by modelled cost (half-layers, see split_decode_percent)";
    size_t n = snprintf(out->value, sizeof out->value, "[");
    for (int32_t k = 0; k < c->n_stage_layers && n < sizeof out->value; k++)
        n += snprintf(out->value + n, sizeof out->value - n, "%s%d", k ? ", " : "", c->stage_layers[k]);
    if (n < sizeof out->value) snprintf(out->value + n, sizeof out->value - n, "]");
    snprintf(out->def, sizeof out->def, "[]");
}
