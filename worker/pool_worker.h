/* The loop that mm-encoder and mm-decoder share (DESIGN section 2, proto/internal.proto
 * "pools"): a DEALER socket with a stable routing id connected to its pool's ROUTER in
 * the coordinator; READY with the capacity, heartbeats whenever nothing else was sent,
 * a coordinator silent for `liveness` heartbeat periods counts as gone (the socket is
 * closed and opened again with exponential backoff, READY again under the same id).
 * The socket lives on a thread of its own so heartbeats go on while a job computes
 * (an SD decode takes minutes); jobs run one after another on the calling thread (the
 * one that loaded the model: a CUDA device is bound per thread). Malformed jobs get an
 * error RESULT, never a crash. CANCEL: a job not started is skipped and answered at once,
 * a running one is asked to stop (mm_pool_job_cancelled); both answer "cancelled".
 * SIGINT/SIGTERM: BYE, the running job asked to stop the same way, then a clean return
 * (a second signal ends the process at once).
 * A worker knows nothing of requests. */
#ifndef MM_POOL_WORKER_H
#define MM_POOL_WORKER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"
#include "proto/internal.pb-c.h"

/* The flags both workers take (mm_pool_worker_usage lists them). */
typedef struct {
    const char *model;      /* --model DIR: model root or the part's own directory */
    const char *backend;    /* --backend cpu|cpu-ref|cuda[:N] */
    int threads;            /* --threads N, 0 = all cores */
    const char *connect;    /* --connect ENDPOINT of the pool's ROUTER (tcp://host:port) */
    char name[256];         /* --name ID: routing id, default "<pool>-<hostname>-<pid>" */
    int32_t capacity;       /* --capacity N: jobs accepted at once (queued + running) */
    int32_t heartbeat_ms;   /* --heartbeat-ms MS */
    int32_t liveness;       /* --liveness N: heartbeat periods of silence = coordinator gone */
    int32_t max_message_mb; /* --max-message-mb N: largest message accepted (ZMQ_MAXMSGSIZE) */
    /* CURVE (the coordinator's pool_curve_secret_key): --curve-key FILE (this worker's pair,
     * or $MM_POOL_CURVE_KEY) and --curve-server-key FILE (the coordinator's public key, or
     * $MM_POOL_SERVER_KEY); Z85 text, "" = plain */
    char curve_public[41], curve_secret[41], curve_server[41];
} mm_pool_worker_config;

/* One job's result, filled by the job function. */
typedef struct {
    int32_t n_tokens, dim;  /* encode RESULT: shape of the f32 token payload */
    int32_t width, height;  /* decode RESULT: image size */
    uint8_t *payload;       /* [len] malloc'd; the loop sends and frees it (also on error) */
    size_t len;
} mm_pool_output;

/* The job being run, as its job function sees it (opaque). */
typedef struct mm_pool_job_ctx mm_pool_job_ctx;

/* Non-zero once the coordinator has cancelled the job, or the worker is stopping
 * (SIGINT/SIGTERM). A long job function looks at it between steps and then returns
 * MM_ERR_CANCELLED with a message starting "cancelled"; one that never looks runs to its
 * end, and its result is replaced by "cancelled". */
int mm_pool_job_cancelled(const mm_pool_job_ctx *ctx);

/* Runs one job (payload: the JOB's second frame). A status other than MM_OK becomes a
 * RESULT with error = mm_error_last() without its source location and error_status =
 * the status: FORMAT/INVALID/UNSUPPORTED for bad input, CANCELLED when it stopped on
 * CANCEL, anything else for a failure. */
typedef mm_status (*mm_pool_job_fn)(void *user, const mm_pool_job_ctx *ctx, const Metamorph__Internal__PoolHeader *job,
                                    const uint8_t *payload, size_t len, mm_pool_output *out);

/* Prints the shared flags (after the program's own usage lines). */
void mm_pool_worker_usage(FILE *f);

/* Parses argv: the shared flags, and any other "--flag VALUE" through extra (may be
 * NULL) which returns 1 when it took the flag, 0 when it does not know it, -1 on a bad
 * value. usage prints the program's own lines. Returns 0 to go on, 1 after -h (usage
 * printed: leave with 0), -1 on a usage error (message printed: leave with 2). */
int mm_pool_worker_parse(int argc, char **argv, const char *prog, const char *pool, void (*usage)(FILE *f),
                         int (*extra)(void *user, const char *flag, const char *value), void *user,
                         mm_pool_worker_config *c);

/* Serves pool ("encode" or "decode") until SIGINT/SIGTERM, running job for each JOB on
 * the calling thread. MM_OK after a clean stop; an error only when it cannot start
 * (bad endpoint, no memory). */
mm_status mm_pool_worker_run(const mm_pool_worker_config *c, const char *pool, mm_pool_job_fn job, void *user);

#endif
