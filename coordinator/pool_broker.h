/* One worker pool seen from the coordinator (DESIGN section 2, proto/internal.proto
 * "pools"): a ROUTER socket that elastic workers (DEALER, stable routing id) join with
 * READY, a worker table, and a job table job_id -> (worker, deadline, payload) so that a
 * job outlives the worker it was sent to. Driven only by the scheduler thread: no locks,
 * and nothing here ever blocks (every send is ZMQ_DONTWAIT; a worker that cannot take a
 * message now counts as gone). Workers are untrusted: anything malformed (a frame that
 * does not parse, READY for another pool, a result for a job id never dispatched, a
 * result the pool's check refuses) drops the worker, re-queues its jobs and is logged;
 * it never takes the coordinator down. A job past job_timeout_ms is sent to another
 * worker as well; the first answer is handed over, later ones (its job answered or
 * cancelled meanwhile) are only dropped: at most one result per job. A worker keeps the
 * slot of every job it was sent until it answers it (it refuses jobs over its capacity),
 * and is told CANCEL when the job is no longer wanted from it. */
#ifndef MM_COORD_POOL_BROKER_H
#define MM_COORD_POOL_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Where and how one pool listens (from mm_serve_config: encode_bind/decode_bind and the
 * pool_* tunables). */
typedef struct {
    void *zmq_ctx;
    const char *endpoint;   /* "tcp://0.0.0.0:50052", "ipc:///tmp/x", ... */
    int32_t heartbeat_ms;   /* heartbeat period, both ways (> 0) */
    int32_t liveness;       /* heartbeats missed before a worker counts as dead (> 0) */
    int32_t job_timeout_ms; /* a job unanswered this long is sent again elsewhere (> 0) */
    int32_t max_message_mb; /* largest message either way (> 0) */
    const char *curve_secret; /* Z85 secret key: CURVE on the ROUTER (a ZAP handler must run); NULL: plain */
} mm_pool_settings;

/* The header fields a JOB carries besides its id (decode jobs; zero for encode). */
typedef struct {
    int32_t n_tokens, dim;  /* shape of a token payload */
    int32_t steps;
    float guidance;
    char sampler[16];
    uint64_t seed;
} mm_pool_job_fields;

/* One answered job, as poll hands it over. */
typedef struct {
    uint64_t job_id;
    mm_status status;       /* MM_OK, or the worker's error_status (INTERNAL when it gave none) */
    char error[384];        /* the worker's message when status != MM_OK */
    int32_t n_tokens, dim;  /* RESULT header: token shape (encode) */
    int32_t width, height;  /* RESULT header: image size (decode) */
    uint8_t *payload;       /* [len] malloc'd, owned by the receiver; NULL on error */
    size_t len;
} mm_pool_result;

/* Accepts or refuses a successful result before it is handed over (payload and header
 * filled, status MM_OK). A refusal (non-OK, with MM_ERROR's message) counts as a broken
 * worker: it is dropped and the job goes to another one. */
typedef mm_status (*mm_pool_check_fn)(void *user, const mm_pool_result *r);

typedef struct {
    int workers_alive;       /* registered (READY) and not declared dead */
    int jobs_queued;         /* waiting for a free worker */
    int jobs_in_flight;      /* sent, unanswered (cancelled or timed-out ones still holding a slot included) */
    uint64_t jobs_sent;      /* JOB messages sent, re-dispatches included */
    uint64_t redispatches;   /* jobs queued again after a dead worker, a BYE or a timeout */
    uint64_t cancels_sent;   /* CANCEL messages sent (job cancelled, or answered by another worker) */
    uint64_t dropped_results; /* late, cancelled, never dispatched, or from an unregistered peer */
    uint64_t workers_dropped; /* dead, gone (BYE) or refused for a protocol error */
} mm_pool_stats;

typedef struct mm_pool_broker mm_pool_broker;

/* Binds the ROUTER of pool `pool` ("encode"/"decode"; READY for another pool is refused).
 * check may be NULL (every result accepted). */
mm_status mm_pool_broker_init(const mm_pool_settings *s, const char *pool, mm_pool_check_fn check, void *check_user,
                              mm_pool_broker **out);
void mm_pool_broker_free(mm_pool_broker *b);

/* Queues a job. payload: malloc'd [len] bytes that the broker owns from now on (freed on
 * every path, this one's failures included); it is kept for re-dispatch and sent without a
 * copy. fields may be NULL. A job_id already queued or in flight is refused (INVALID). */
mm_status mm_pool_broker_submit(mm_pool_broker *b, uint64_t job_id, const mm_pool_job_fields *fields, uint8_t *payload,
                                size_t len);
/* Forgets a job: a queued one is dropped; a worker running it is sent CANCEL (without
 * waiting; a failed send is only logged) and keeps its slot until it answers (at once
 * when it skips or stops the job; the answer is dropped), leaves or is declared dead.
 * Unknown ids: no-op. */
void mm_pool_broker_cancel(mm_pool_broker *b, uint64_t job_id);

/* Does the work of one scheduler tick at time now_ms (mm_now_ms): reads every waiting
 * message, declares silent workers dead and re-queues their jobs at the front, re-queues
 * jobs past their deadline (for a worker other than the one still running them),
 * dispatches queued jobs least-loaded first (up to a worker's capacity), and heartbeats
 * workers that were sent nothing for heartbeat_ms. */
void mm_pool_broker_pump(mm_pool_broker *b, double now_ms);
/* 1 and *out (payload moved to the caller) when a result is ready, 0 when none is. */
int mm_pool_broker_poll(mm_pool_broker *b, mm_pool_result *out);

int mm_pool_broker_workers_alive(const mm_pool_broker *b);
void mm_pool_broker_stats(const mm_pool_broker *b, mm_pool_stats *out);
/* The ROUTER socket, for a zmq_poll item (POLLIN: pump soon). */
void *mm_pool_broker_socket(const mm_pool_broker *b);

#endif
