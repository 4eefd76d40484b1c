/* The service's tunables, declared in one place with their defaults (serve_config.c's
 * table), read from one JSON config file that the coordinator and every stage load.
 * Unknown keys are errors, so a typo never silently falls back to a default. */
#ifndef MM_SERVE_CONFIG_H
#define MM_SERVE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define MM_MAX_STAGES 64

typedef struct {
    char model[4096];          /* model root (metamorph.json) or an HF LLaMA directory */
    char listen[256];          /* gRPC address, "host:port" */
    char backend[32];          /* compute backend of the stages: "cpu", "cpu-ref", "cuda" */
    char kv_dtype[8];          /* KV cache type: "auto" (the checkpoint's dtype), "f32", "bf16" */
    char hostfile[1024];       /* deploy/launch.sh: MPICH hostfile, "" = this host only */
    int32_t threads;           /* backend threads per stage, 0 = all cores */
    int32_t kv_blocks;         /* KV blocks per stage (each stage: its own layers) */
    int32_t kv_block_size;     /* tokens per KV block */
    int32_t max_batch_tokens;  /* per-step token budget (decodes + prefill chunks) */
    int32_t max_batch_seqs;    /* sequences in one micro-batch at most */
    int32_t max_queue;         /* waiting requests at most; more -> RESOURCE_EXHAUSTED */
    int32_t max_new_tokens;    /* default when a request does not say */
    int32_t max_images;        /* image parts per request at most */
    int32_t max_receive_mb;    /* gRPC receive limit (images) */
    int32_t max_stop_strings;  /* stop strings per request at most */
    int32_t stage_timeout_ms;  /* a step in flight longer than this: pipeline down */
    int32_t stage_liveness_ms; /* a stage or the coordinator silent this long counts as dead (pipeline/liveness.h) */
    int32_t fail_exit_ms;      /* after the pipeline went down, serve NOT_SERVING this long, then exit */
    int32_t stages;            /* P for deploy/launch.sh (the MPI job size decides at run time) */
    int32_t encoders;          /* deploy/launch.sh: mm-encoder workers on this host (more may join) */
    int32_t decoders;          /* deploy/launch.sh: mm-decoder workers on this host */
    int32_t worker_threads;    /* deploy/launch.sh: threads per pool worker, 0 = all cores */
    int32_t start_timeout_ms;  /* deploy/launch.sh: not serving this long after a start: tear the job down */
    int32_t host_max_failures; /* deploy/launch.sh: failed starts before unreachable hosts are left out */
    int32_t restart_delay_ms;  /* deploy/launch.sh: pause before restarting a dead job */
    char encode_bind[256];     /* encoder pool ROUTER endpoint (tcp://0.0.0.0:50052 for other hosts), "" = none */
    char decode_bind[256];     /* decoder pool ROUTER endpoint, "" = none */
    int32_t pool_heartbeat_ms; /* heartbeat period, both ways */
    int32_t pool_liveness;     /* heartbeats missed before a worker (or the coordinator) counts as dead */
    int32_t pool_job_timeout_ms; /* a job unanswered this long on a live worker is sent elsewhere */
    int32_t pool_max_message_mb; /* largest pool message (an image, its tokens, a PNG) */
    int32_t embed_cache_mb;    /* visual tokens of recently seen images (LRU by image hash), 0 = off */
    int32_t prefix_cache;      /* 1: reuse the KV blocks of a prompt prefix seen before (kv_blocks.h), 0: off */
    int32_t image_steps;       /* diffusion steps when a request does not say */
    char metrics_listen[256];  /* Prometheus /metrics, /healthz, /readyz over HTTP, "host:port"; "" = off */
    char http_listen[256];     /* OpenAI-compatible HTTP API, "host:port"; "" = off */
    int32_t http_max_body_mb;  /* largest HTTP request body (base64 images inflate by 4/3) */
    int32_t http_max_connections; /* HTTP connections at once (one thread each) */
    char served_model_name[256]; /* the model's id in the HTTP API, "" = the model directory's name */
    char tls_cert[1024];       /* PEM chain: both API doors over TLS (with tls_key); "" = plain text */
    char tls_key[1024];        /* PEM private key of tls_cert */
    char tls_client_ca[1024];  /* PEM CA: clients must present a certificate it signed; "" = not asked */
    char api_keys_file[1024];  /* coordinator/api_keys.h; "" = no key needed */
    char auth_open[32];        /* reachable without a key: "", "health", "metrics", "health,metrics" */
    char pool_curve_secret_key[1024]; /* common/curve_keys.h key file: CURVE on the pools; "" = plain */
    char pool_authorized_keys[1024];  /* workers' public keys admitted by the ZAP handler */
    char pool_worker_key[1024];       /* deploy/launch.sh: key file of the workers it starts */
    char trace_file[1024];     /* coordinator/trace.h: the scheduler's timeline as JSON lines; "" = off */
    char log_level[16];        /* error, warn, info, debug (MM_LOG_LEVEL wins) */
    char log_format[16];       /* text or json: one line per message (MM_LOG_FORMAT wins) */
    int32_t key_max_requests;  /* per API key: requests in flight at most, 0 = no limit */
    int32_t key_max_tokens;    /* per API key: prompt + max_new_tokens in flight at most, 0 = no limit */
    int32_t log_stats_ms;      /* coordinator: a throughput line this often while busy, 0 = never */
    int32_t http2_guard;       /* 1: the coordinator owns the gRPC port and bounds HTTP/2 (coordinator/h2_guard.h) */
    int32_t http2_max_connections; /* gRPC port: connections at once, all peers */
    int32_t http2_max_connections_per_peer; /* gRPC port: connections at once from one IP address */
    int32_t http2_handshake_timeout_ms; /* gRPC port: TLS handshake + HTTP/2 preface deadline */
    int32_t split_decode_percent; /* stage split: sampled tokens per 100 computed (stage_split.h) */
    int32_t stage_layers[MM_MAX_STAGES]; /* layers per stage; n_stage_layers == 0: split by cost (stage_split.h) */
    int32_t n_stage_layers;
} mm_serve_config;

/* Defaults for everything. */
void mm_serve_config_defaults(mm_serve_config *c);
/* Defaults, then the keys of the JSON object in path (NULL: defaults only), then the
 * environment overrides (MM_MODEL, MM_LISTEN: see the table). */
mm_status mm_serve_config_load(const char *path, mm_serve_config *c);
/* One tunable as text, for mm-coordinator --print-config and the README reference:
 * value (in the config given) and default as JSON text. */
typedef struct {
    const char *key, *doc;
    const char *env; /* environment variable that overrides the file, NULL: none */
    char value[4200], def[4200];
} mm_serve_tunable;
/* Number of tunables; mm_serve_config_tunable(c, i, t) for i below it fills t. */
size_t mm_serve_config_n_tunables(void);
void mm_serve_config_tunable(const mm_serve_config *c, size_t i, mm_serve_tunable *t);

#endif
