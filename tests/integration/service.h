/* Test helpers that start and stop the whole service on loopback (mpiexec with
 * hydra's fork launcher on localhost, free ports, a temporary config file), start and
 * kill pool workers (mm-encoder, mm-decoder), make the calls the integration tests need
 * through tools/mm_client, and read the service's metrics and logs. */
#ifndef MM_TEST_SERVICE_H
#define MM_TEST_SERVICE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/clock.h"
#include "proto/metamorph.pb-c.h"
#include "tools/mm_client.h"

#define SVC_MAX_WORKERS 16

typedef struct {
    pid_t pid;           /* mpiexec (leader of its own process group) */
    char target[64];     /* 127.0.0.1:PORT */
    char dir[256];       /* temporary directory: cfg.json, service.log, worker logs */
    char encode_ep[64], decode_ep[64]; /* the pools' tcp endpoints */
    char metrics[64];    /* 127.0.0.1:PORT of the Prometheus endpoint */
    char http[64];       /* 127.0.0.1:PORT of the OpenAI-compatible HTTP API */
    char bin_dir[1024];  /* the build tree (workers: BIN/worker/mm-encoder, mm-decoder) */
    pid_t workers[SVC_MAX_WORKERS];    /* 0: slot free */
    int n_worker_starts;
    mm_client *cl;
} mm_service;

/* The model root that svc_start and svc_worker_start use; NULL (the default): the
 * embedded $MM_ASSETS_DIR/tiny. */
extern const char *svc_model;

/* argv of the test: COORDINATOR STAGE ... ; extra_json: more config keys ("" or
 * "\"kv_blocks\": 40, ..."). Starts one encoder and one decoder worker (from the build
 * tree of COORDINATOR) and waits until health says SERVING. Returns 0 on success. */
int svc_start(mm_service *s, const char *coordinator, const char *stage, int n_stages, const char *extra_json);
/* The same with n_encoders / n_decoders workers (0: that pool starts empty). */
int svc_start_pools(mm_service *s, const char *coordinator, const char *stage, int n_stages, const char *extra_json,
                    int n_encoders, int n_decoders);
/* Starts one more worker, pool "encode" or "decode"; returns its pid (> 0) or -1. */
pid_t svc_worker_start(mm_service *s, const char *pool);
/* Sends sig to worker pid and, for SIGKILL/SIGTERM, reaps it. */
void svc_worker_kill(mm_service *s, pid_t pid, int sig);
/* SIGTERM, then waits (SIGKILL to the group after 10 s); workers are killed too.
 * Returns the exit status of the MPI job. */
int svc_stop(mm_service *s);
/* Waits for mpiexec to exit by itself, up to timeout_s: its status, or -1. */
int svc_wait_exit(mm_service *s, double timeout_s);

/* Health: 1 SERVING, 0 NOT_SERVING, -code on RPC error. */
int svc_health(mm_service *s);
/* GetModelInfo (caller frees with metamorph__v1__model_info__free_unpacked), NULL on error. */
Metamorph__V1__ModelInfo *svc_info(mm_service *s);

typedef struct {
    int code;
    char msg[512];
    int32_t ids[4096];
    int n_ids;
    char text[65536];
    int n_events;
    int prompt_tokens, cached_tokens; /* the final usage */
} gen_result;

/* One user message, greedy; stream chooses GenerateStream. */
void svc_generate(mm_service *s, const char *prompt, int max_new, int stream, double timeout_s, gen_result *out);
/* A conversation of text messages; temperature 0 = greedy, else sampled with seed. */
typedef struct {
    const char *role, *text;
} svc_msg;
void svc_chat(mm_service *s, const svc_msg *msgs, int n_msgs, float temperature, uint64_t seed, int max_new, int stream,
              double timeout_s, gen_result *out);
/* Raw call with request bytes (for malformed input tests). */
int svc_raw(mm_service *s, const char *method, const void *req, size_t len, char *msg, size_t cap);

/* The value of one series on the service's Prometheus endpoint, spelled as rendered
 * ("metamorph_pool_workers{pool=\"decode\"}"); NaN when absent or unreachable. */
double svc_metric(const mm_service *s, const char *series);
/* Polls svc_metric until it equals want, up to timeout_s: 0 when it did, -1 if not. */
int svc_wait_metric(const mm_service *s, const char *series, double want, double timeout_s);
/* Lines of the log DIR/name ("service.log", "decode-test-1.log") that contain needle;
 * -1 when the log cannot be read. */
int svc_log_count(const mm_service *s, const char *name, const char *needle);

#endif
