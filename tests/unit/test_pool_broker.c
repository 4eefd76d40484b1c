/* The pool brokers against fake workers: DEALER sockets in this thread, driven step by
 * step over ipc://, so every rule of proto/internal.proto "pools" is exercised without a
 * model: registration, least-loaded dispatch and batching, heartbeats, dead workers and
 * their re-queued jobs, late and cancelled results, malformed workers, BYE, an empty
 * pool; then the encoder pool's embedding cache and coalescing, the decoder pool's PNG
 * check, and the cache's LRU bound. Loops wait for events with an iteration bound,
 * never a time threshold. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/clock.h"
#include "coordinator/decoder_pool.h"
#include "coordinator/embed_cache.h"
#include "coordinator/encoder_pool.h"
#include "coordinator/pool_broker.h"
#include "proto/internal.pb-c.h"
#include "tests/testutil.h"

typedef Metamorph__Internal__PoolHeader pool_header;
#define T_READY METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_READY
#define T_HEARTBEAT METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT
#define T_JOB METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB
#define T_RESULT METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_RESULT
#define T_BYE METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_BYE
#define T_CANCEL METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_CANCEL

enum { MAX_STEPS = 3000 }; /* pump iterations (about 1 ms each) before a wait gives up */

static void *g_ctx;
static char g_endpoint[128];

/* ------------------------------------------------------------------ fake workers */

typedef struct {
    void *sock;
    const char *name;
    int heartbeats;             /* heartbeats received from the broker */
    uint64_t jobs[16];          /* ids of the jobs received, in order */
    int n_jobs;
    uint64_t cancels[16];       /* ids of the CANCELs received, in order */
    int n_cancels;
    pool_header *last_job;      /* header of the last JOB (owned) */
    uint8_t last_payload[4096]; /* [last_len] */
    size_t last_len;
} fake;

static void fake_open(fake *f, const char *name) {
    memset(f, 0, sizeof *f);
    f->name = name;
    f->sock = zmq_socket(g_ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(f->sock, ZMQ_ROUTING_ID, name, strlen(name));
    zmq_setsockopt(f->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_connect(f->sock, g_endpoint) != 0) fprintf(stderr, "connect %s: %s\n", g_endpoint, zmq_strerror(zmq_errno()));
}

static void fake_close(fake *f) {
    if (f->last_job) metamorph__internal__pool_header__free_unpacked(f->last_job, NULL);
    zmq_close(f->sock);
    f->sock = NULL, f->last_job = NULL;
}

/* Sends h (and a payload frame when payload != NULL). */
static void fake_send(fake *f, const pool_header *h, const void *payload, size_t len) {
    uint8_t buf[1024];
    size_t n = metamorph__internal__pool_header__pack(h, buf);
    zmq_send(f->sock, buf, n, payload ? ZMQ_SNDMORE : 0);
    if (payload) zmq_send(f->sock, payload, len, 0);
}

static void fake_ready(fake *f, const char *pool, int capacity) {
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = T_READY, h.pool = (char *)pool, h.worker = (char *)f->name, h.capacity = capacity;
    fake_send(f, &h, NULL, 0);
}

static void fake_simple(fake *f, Metamorph__Internal__PoolMsgType type) {
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = type;
    fake_send(f, &h, NULL, 0);
}

static void fake_result(fake *f, uint64_t job_id, int32_t n_tokens, int32_t dim, const void *payload, size_t len) {
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = T_RESULT, h.job_id = job_id, h.n_tokens = n_tokens, h.dim = dim;
    fake_send(f, &h, payload, len);
}

static void fake_error(fake *f, uint64_t job_id, mm_status status, const char *error) {
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = T_RESULT, h.job_id = job_id, h.error_status = (int32_t)status, h.error = (char *)error;
    fake_send(f, &h, NULL, 0);
}

/* Reads everything waiting: heartbeats are counted, jobs recorded. */
static void fake_drain(fake *f) {
    for (;;) {
        uint8_t hdr[1024];
        int n = zmq_recv(f->sock, hdr, sizeof hdr, ZMQ_DONTWAIT);
        if (n < 0) return;
        int more = 0;
        size_t sz = sizeof more;
        zmq_getsockopt(f->sock, ZMQ_RCVMORE, &more, &sz);
        size_t len = 0;
        if (more) {
            int got = zmq_recv(f->sock, f->last_payload, sizeof f->last_payload, 0);
            len = got > 0 ? (size_t)got : 0;
        }
        pool_header *h = metamorph__internal__pool_header__unpack(NULL, (size_t)n, hdr);
        if (!h) continue;
        if (h->type == T_HEARTBEAT) {
            f->heartbeats++;
            metamorph__internal__pool_header__free_unpacked(h, NULL);
        } else if (h->type == T_JOB) {
            if (f->n_jobs < 16) f->jobs[f->n_jobs++] = h->job_id;
            f->last_len = len;
            if (f->last_job) metamorph__internal__pool_header__free_unpacked(f->last_job, NULL);
            f->last_job = h;
        } else if (h->type == T_CANCEL) {
            if (f->n_cancels < 16) f->cancels[f->n_cancels++] = h->job_id;
            metamorph__internal__pool_header__free_unpacked(h, NULL);
        } else {
            metamorph__internal__pool_header__free_unpacked(h, NULL);
        }
    }
}

/* ------------------------------------------------------------------ driving */

static mm_pool_settings settings(int32_t heartbeat_ms, int32_t liveness, int32_t job_timeout_ms) {
    static int seq;
    snprintf(g_endpoint, sizeof g_endpoint, "ipc:///tmp/mm-test-pool-%d-%d", (int)getpid(), seq++);
    return (mm_pool_settings){.zmq_ctx = g_ctx, .endpoint = g_endpoint, .heartbeat_ms = heartbeat_ms,
                              .liveness = liveness, .job_timeout_ms = job_timeout_ms, .max_message_mb = 1};
}

/* A quiet pool: nobody is declared dead and no job times out during a test. */
static mm_pool_settings quiet_settings(void) { return settings(60000, 10, 600000); }

static void step(mm_pool_broker *b) {
    mm_pool_broker_pump(b, mm_now_ms());
    usleep(1000);
}

/* Pumps until f has received `want` jobs in total. */
static int wait_jobs(mm_pool_broker *b, fake *f, int want) {
    for (int i = 0; i < MAX_STEPS && f->n_jobs < want; i++) {
        step(b);
        fake_drain(f);
    }
    return f->n_jobs >= want;
}

static int wait_alive(mm_pool_broker *b, int want) {
    for (int i = 0; i < MAX_STEPS && mm_pool_broker_workers_alive(b) != want; i++) step(b);
    return mm_pool_broker_workers_alive(b) == want;
}

static int wait_result(mm_pool_broker *b, mm_pool_result *r) {
    for (int i = 0; i < MAX_STEPS; i++) {
        step(b);
        if (mm_pool_broker_poll(b, r)) return 1;
    }
    return 0;
}

/* Pumps a while (no event expected) and counts the results that still came. */
static int results_during(mm_pool_broker *b, int steps) {
    int n = 0;
    mm_pool_result r;
    for (int i = 0; i < steps; i++) {
        step(b);
        while (mm_pool_broker_poll(b, &r)) {
            n++;
            free(r.payload);
        }
    }
    return n;
}

static uint8_t *bytes_of(const char *s) {
    uint8_t *p = malloc(strlen(s) + 1);
    memcpy(p, s, strlen(s) + 1);
    return p;
}

static mm_pool_broker *broker_new(const mm_pool_settings *s, mm_pool_check_fn check) {
    mm_pool_broker *b = NULL;
    mm_status st = mm_pool_broker_init(s, "encode", check, NULL, &b);
    EXPECT(st == MM_OK, "broker init: %s", mm_error_last());
    return b;
}

/* ------------------------------------------------------------------ broker cases */

static void test_least_loaded_and_batching(void) {
    mm_pool_settings s = quiet_settings();
    mm_pool_broker *b = broker_new(&s, NULL);
    fake one, two;
    fake_open(&one, "cap-one");
    fake_open(&two, "cap-two");
    fake_ready(&one, "encode", 1);
    EXPECT(wait_alive(b, 1), "first READY registers");
    fake_ready(&two, "encode", 2);
    EXPECT(wait_alive(b, 2), "second READY registers");

    for (uint64_t id = 1; id <= 3; id++) mm_pool_broker_submit(b, id, NULL, bytes_of("img"), 3);
    mm_pool_broker_pump(b, mm_now_ms());
    mm_pool_stats st;
    mm_pool_broker_stats(b, &st);
    EXPECT(st.jobs_in_flight == 3 && st.jobs_queued == 0, "one pump sends all 3 (in flight %d, queued %d)",
           st.jobs_in_flight, st.jobs_queued);
    EXPECT(wait_jobs(b, &two, 2), "capacity 2 gets 2 jobs at once (got %d)", two.n_jobs);
    EXPECT(wait_jobs(b, &one, 1), "capacity 1 gets 1 job (got %d)", one.n_jobs);
    EXPECT(one.n_jobs == 1 && two.n_jobs == 2, "split 1/2, got %d/%d", one.n_jobs, two.n_jobs);
    EXPECT(one.last_len == 3 && memcmp(one.last_payload, "img", 3) == 0, "payload travels");

    uint64_t answered[3] = {one.jobs[0], two.jobs[0], two.jobs[1]};
    for (int k = 0; k < 3; k++) {
        char out[8];
        snprintf(out, sizeof out, "r%llu", (unsigned long long)answered[k]);
        fake_result(k == 0 ? &one : &two, answered[k], 0, 0, out, strlen(out));
    }
    int seen[4] = {0};
    mm_pool_result r;
    for (int k = 0; k < 3; k++) {
        if (!wait_result(b, &r)) break;
        char want[8];
        snprintf(want, sizeof want, "r%llu", (unsigned long long)r.job_id);
        EXPECT(r.status == MM_OK && r.len == strlen(want) && memcmp(r.payload, want, r.len) == 0, "result of %llu",
               (unsigned long long)r.job_id);
        if (r.job_id >= 1 && r.job_id <= 3) seen[r.job_id]++;
        free(r.payload);
    }
    EXPECT(seen[1] == 1 && seen[2] == 1 && seen[3] == 1, "each job answered once");

    /* Both idle: the next two go one to each (most free slots first, then the emptier). */
    mm_pool_broker_submit(b, 4, NULL, bytes_of("x"), 1);
    mm_pool_broker_submit(b, 5, NULL, bytes_of("y"), 1);
    EXPECT(wait_jobs(b, &one, 2) && wait_jobs(b, &two, 3), "one job each (got %d, %d)", one.n_jobs, two.n_jobs);
    fake_close(&one);
    fake_close(&two);
    mm_pool_broker_free(b);
}

static void test_heartbeats_sent(void) {
    mm_pool_settings s = settings(20, 50, 600000);
    mm_pool_broker *b = broker_new(&s, NULL);
    fake w;
    fake_open(&w, "listener");
    fake_ready(&w, "encode", 1);
    for (int i = 0; i < MAX_STEPS && w.heartbeats < 3; i++) {
        step(b);
        fake_drain(&w);
        if (i % 10 == 0) fake_simple(&w, T_HEARTBEAT);
    }
    EXPECT(w.heartbeats >= 3, "broker heartbeats an idle worker (got %d)", w.heartbeats);
    EXPECT(mm_pool_broker_workers_alive(b) == 1, "a heartbeating worker stays alive");
    fake_close(&w);
    mm_pool_broker_free(b);

    /* A worker with a shorter period than ours is heartbeated at its own period. */
    s = quiet_settings();
    b = broker_new(&s, NULL);
    fake quick;
    fake_open(&quick, "quick");
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = T_READY, h.pool = (char *)"encode", h.capacity = 1, h.heartbeat_ms = 10;
    fake_send(&quick, &h, NULL, 0);
    for (int i = 0; i < MAX_STEPS && quick.heartbeats < 3; i++) {
        step(b);
        fake_drain(&quick);
    }
    EXPECT(quick.heartbeats >= 3, "heartbeats at the worker's shorter period (got %d)", quick.heartbeats);
    fake_close(&quick);
    mm_pool_broker_free(b);
}

static void test_silent_worker_dies(void) {
    mm_pool_settings s = settings(20, 3, 600000);
    mm_pool_broker *b = broker_new(&s, NULL);
    fake silent, alive;
    fake_open(&silent, "silent");
    fake_open(&alive, "alive");
    fake_ready(&silent, "encode", 1);
    EXPECT(wait_alive(b, 1), "silent registers");
    mm_pool_broker_submit(b, 42, NULL, bytes_of("img"), 3);
    EXPECT(wait_jobs(b, &silent, 1), "the only worker gets the job");
    /* `alive` announces a 1 s period (so a loaded machine cannot make it look dead) and
     * heartbeats every few steps; `silent` (20 ms: dead after 60 ms) now says nothing. */
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = T_READY, h.pool = (char *)"encode", h.capacity = 1, h.heartbeat_ms = 1000;
    fake_send(&alive, &h, NULL, 0);
    for (int i = 0; i < MAX_STEPS && alive.n_jobs == 0; i++) {
        step(b);
        fake_drain(&alive);
        if (i % 5 == 0) fake_simple(&alive, T_HEARTBEAT);
    }
    EXPECT(alive.n_jobs == 1 && alive.jobs[0] == 42, "the dead worker's job goes to the live one");
    mm_pool_stats st;
    mm_pool_broker_stats(b, &st);
    EXPECT(st.workers_alive == 1 && st.redispatches == 1 && st.workers_dropped == 1,
           "alive %d, redispatches %llu, dropped %llu", st.workers_alive, (unsigned long long)st.redispatches,
           (unsigned long long)st.workers_dropped);

    fake_result(&silent, 42, 0, 0, "late", 4); /* from a worker no longer registered */
    fake_result(&alive, 42, 0, 0, "good", 4);
    mm_pool_result r;
    EXPECT(wait_result(b, &r) && r.job_id == 42 && r.len == 4 && memcmp(r.payload, "good", 4) == 0,
           "the live worker's answer is the one handed over");
    free(r.payload);
    fake_simple(&alive, T_HEARTBEAT);
    EXPECT(results_during(b, 20) == 0, "the late answer is dropped");
    fake_close(&silent);
    fake_close(&alive);
    mm_pool_broker_free(b);
}

static int wait_cancels(mm_pool_broker *b, fake *f, int want) {
    for (int i = 0; i < MAX_STEPS && f->n_cancels < want; i++) {
        step(b);
        fake_drain(f);
    }
    return f->n_cancels >= want;
}

/* A job past its timeout on a worker that is still running it: the worker's slot stays
 * taken (a real worker refuses a job over its capacity, and that refusal would fail the
 * request), the job waits for another worker, and the answer that comes after the
 * timeout is taken since the job is still wanted. */
static void test_job_timeout_busy_worker(void) {
    mm_pool_settings s = settings(60000, 10, 30);
    mm_pool_broker *b = broker_new(&s, NULL);
    fake w;
    fake_open(&w, "slow");
    fake_ready(&w, "encode", 1);
    mm_pool_broker_submit(b, 7, NULL, bytes_of("img"), 3);
    mm_pool_broker_submit(b, 8, NULL, bytes_of("img"), 3);
    EXPECT(wait_jobs(b, &w, 1) && w.jobs[0] == 7, "job 7 sent");
    EXPECT(results_during(b, 100) == 0, "nothing answered yet");
    fake_drain(&w);
    mm_pool_stats st;
    mm_pool_broker_stats(b, &st);
    EXPECT(w.n_jobs == 1 && st.redispatches >= 1,
           "a worker still on its timed-out job gets nothing over its capacity (jobs sent to it %d, redispatches %llu)",
           w.n_jobs, (unsigned long long)st.redispatches);
    fake_result(&w, 7, 0, 0, "one", 3);
    mm_pool_result r;
    EXPECT(wait_result(b, &r) && r.job_id == 7 && r.status == MM_OK && r.len == 3 && memcmp(r.payload, "one", 3) == 0,
           "the answer after the timeout is taken: the job was still wanted");
    free(r.payload);
    EXPECT(wait_jobs(b, &w, 2) && w.jobs[1] == 8, "the answer frees the slot: job 8 goes out");
    mm_pool_broker_stats(b, &st);
    EXPECT(st.workers_alive == 1 && st.workers_dropped == 0 && st.dropped_results == 0, "alive %d, dropped %llu/%llu",
           st.workers_alive, (unsigned long long)st.workers_dropped, (unsigned long long)st.dropped_results);
    fake_close(&w);
    mm_pool_broker_free(b);
}

/* A job past its timeout with another worker free: sent there too; the first answer is
 * handed over, the other worker is told CANCEL and its answer is dropped. */
static void test_job_timeout_goes_elsewhere(void) {
    mm_pool_settings s = settings(60000, 10, 30);
    mm_pool_broker *b = broker_new(&s, NULL);
    fake slow, spare;
    fake_open(&slow, "slow");
    fake_open(&spare, "spare");
    fake_ready(&slow, "encode", 1);
    EXPECT(wait_alive(b, 1), "slow registers");
    mm_pool_broker_submit(b, 7, NULL, bytes_of("img"), 3);
    EXPECT(wait_jobs(b, &slow, 1), "slow gets job 7");
    fake_ready(&spare, "encode", 1);
    EXPECT(wait_jobs(b, &spare, 1) && spare.jobs[0] == 7, "after the timeout job 7 goes to the spare worker");
    fake_drain(&slow);
    EXPECT(slow.n_jobs == 1, "not to the slow one again (%d)", slow.n_jobs);
    fake_result(&spare, 7, 0, 0, "two", 3);
    mm_pool_result r;
    EXPECT(wait_result(b, &r) && r.job_id == 7 && memcmp(r.payload, "two", 3) == 0, "the first answer is handed over");
    free(r.payload);
    EXPECT(wait_cancels(b, &slow, 1) && slow.cancels[0] == 7, "the slow worker is told to stop");
    fake_error(&slow, 7, MM_ERR_CANCELLED, "cancelled after step 2 of 9");
    EXPECT(results_during(b, 20) == 0, "its answer is dropped");
    mm_pool_stats st;
    mm_pool_broker_stats(b, &st);
    EXPECT(st.dropped_results == 1 && st.workers_alive == 2 && st.jobs_in_flight == 0,
           "dropped %llu, alive %d, in flight %d", (unsigned long long)st.dropped_results, st.workers_alive,
           st.jobs_in_flight);
    fake_close(&slow);
    fake_close(&spare);
    mm_pool_broker_free(b);
}

/* An in-flight job cancelled: its worker gets CANCEL, answers "cancelled" (the slot frees
 * at once, the answer is dropped, the worker stays); a queued one is simply forgotten. */
static void test_cancel(void) {
    mm_pool_settings s = quiet_settings();
    mm_pool_broker *b = broker_new(&s, NULL);
    fake w;
    fake_open(&w, "worker");
    fake_ready(&w, "encode", 1);
    mm_pool_broker_submit(b, 1, NULL, bytes_of("a"), 1);
    EXPECT(wait_jobs(b, &w, 1), "job 1 sent");
    mm_pool_broker_cancel(b, 1);
    mm_pool_broker_submit(b, 2, NULL, bytes_of("b"), 1);
    mm_pool_broker_submit(b, 3, NULL, bytes_of("c"), 1);
    mm_pool_broker_cancel(b, 3); /* still queued: simply gone */
    EXPECT(wait_cancels(b, &w, 1) && w.cancels[0] == 1, "CANCEL of job 1 reaches its worker (%d)", w.n_cancels);
    for (int i = 0; i < 30; i++) {
        step(b);
        fake_drain(&w);
    }
    mm_pool_stats st;
    mm_pool_broker_stats(b, &st);
    EXPECT(w.n_jobs == 1 && st.jobs_in_flight == 1, "the cancelled job keeps its slot until answered (jobs %d, in flight %d)",
           w.n_jobs, st.jobs_in_flight);
    EXPECT(w.n_cancels == 1 && st.cancels_sent == 1, "no CANCEL for the queued job 3 (%d, %llu)", w.n_cancels,
           (unsigned long long)st.cancels_sent);
    fake_error(&w, 1, MM_ERR_CANCELLED, "cancelled after step 3 of 999");
    EXPECT(wait_jobs(b, &w, 2) && w.jobs[1] == 2, "the slot frees when the worker answers the CANCEL");
    fake_result(&w, 2, 0, 0, "b", 1);
    mm_pool_result r;
    EXPECT(wait_result(b, &r) && r.job_id == 2 && r.status == MM_OK, "only job 2 is handed over");
    free(r.payload);
    EXPECT(results_during(b, 10) == 0 && w.n_jobs == 2, "nothing else: no result of 1, job 3 never sent");
    mm_pool_broker_stats(b, &st);
    EXPECT(st.dropped_results == 1 && st.workers_alive == 1 && st.workers_dropped == 0 && st.jobs_in_flight == 0,
           "the \"cancelled\" answer dropped, not a protocol error (dropped %llu, alive %d, workers dropped %llu)",
           (unsigned long long)st.dropped_results, st.workers_alive, (unsigned long long)st.workers_dropped);

    /* a result that crossed the CANCEL is dropped the same way */
    mm_pool_broker_submit(b, 4, NULL, bytes_of("d"), 1);
    EXPECT(wait_jobs(b, &w, 3) && w.jobs[2] == 4, "job 4 sent");
    fake_result(&w, 4, 0, 0, "d", 1);
    mm_pool_broker_cancel(b, 4);
    EXPECT(wait_cancels(b, &w, 2) && w.cancels[1] == 4, "CANCEL of job 4");
    EXPECT(results_during(b, 20) == 0, "job 4's result is not handed over");
    mm_pool_broker_stats(b, &st);
    EXPECT(st.dropped_results == 2 && st.jobs_in_flight == 0 && st.workers_alive == 1, "dropped %llu, in flight %d",
           (unsigned long long)st.dropped_results, st.jobs_in_flight);
    fake_close(&w);
    mm_pool_broker_free(b);
}

/* "cancelled" for a job nobody cancelled is no verdict on the job: it is not handed over
 * (the request would fail); the worker is dropped as for any protocol error and the job
 * is sent again. */
static void test_unasked_cancelled_is_requeued(void) {
    mm_pool_settings s = quiet_settings();
    mm_pool_broker *b = broker_new(&s, NULL);
    fake w;
    fake_open(&w, "stopping");
    fake_ready(&w, "encode", 1);
    mm_pool_broker_submit(b, 5, NULL, bytes_of("img"), 3);
    EXPECT(wait_jobs(b, &w, 1), "job 5 sent");
    fake_error(&w, 5, MM_ERR_CANCELLED, "cancelled after step 3 of 50");
    EXPECT(wait_alive(b, 0), "the worker is dropped");
    mm_pool_result r;
    EXPECT(!mm_pool_broker_poll(b, &r), "the \"cancelled\" answer is not handed over");
    fake_ready(&w, "encode", 1);
    EXPECT(wait_jobs(b, &w, 2) && w.jobs[1] == 5, "job 5 is sent again");
    fake_result(&w, 5, 0, 0, "img", 3);
    EXPECT(wait_result(b, &r) && r.job_id == 5 && r.status == MM_OK, "the real answer is");
    free(r.payload);
    fake_close(&w);
    mm_pool_broker_free(b);
}

/* Accepts payloads of exactly 4 bytes with n_tokens 1, dim 1 (a stand-in for a shape). */
static mm_status check_four(void *user, const mm_pool_result *r) {
    (void)user;
    if (r->len != 4 || r->n_tokens != 1 || r->dim != 1) return MM_ERROR(MM_ERR_FORMAT, "shape");
    return MM_OK;
}

typedef enum { BAD_UNPARSABLE, BAD_FOUR_FRAMES, BAD_JOB_ID, BAD_SHAPE, BAD_POOL, BAD_NO_PAYLOAD, BAD_COUNT } misbehaviour;

static void misbehave(fake *f, misbehaviour how, uint64_t job_id) {
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    switch (how) {
    case BAD_UNPARSABLE:
        zmq_send(f->sock, "\xff\xff\xff\xff garbage", 12, 0);
        break;
    case BAD_FOUR_FRAMES:
        h.type = T_RESULT, h.job_id = job_id;
        uint8_t buf[64];
        size_t n = metamorph__internal__pool_header__pack(&h, buf);
        zmq_send(f->sock, buf, n, ZMQ_SNDMORE);
        zmq_send(f->sock, "abcd", 4, ZMQ_SNDMORE);
        zmq_send(f->sock, "more", 4, 0);
        break;
    case BAD_JOB_ID:
        fake_result(f, 999999, 1, 1, "abcd", 4);
        break;
    case BAD_SHAPE:
        fake_result(f, job_id, 1, 1, "abcdef", 6);
        break;
    case BAD_POOL:
        fake_ready(f, "decode", 1);
        break;
    case BAD_NO_PAYLOAD:
        fake_result(f, job_id, 1, 1, NULL, 0);
        break;
    case BAD_COUNT:
        break;
    }
}

static void test_misbehaving_workers(void) {
    static const char *NAMES[BAD_COUNT] = {"unparsable", "four frames", "wrong job id", "wrong shape",
                                           "READY for the wrong pool", "result without payload"};
    for (int how = 0; how < BAD_COUNT; how++) {
        mm_pool_settings s = quiet_settings();
        mm_pool_broker *b = broker_new(&s, check_four);
        fake bad, good;
        fake_open(&bad, "bad");
        fake_open(&good, "good");
        fake_ready(&bad, "encode", 1);
        EXPECT(wait_alive(b, 1), "%s: bad registers", NAMES[how]);
        uint64_t id = 100 + (uint64_t)how;
        mm_pool_broker_submit(b, id, NULL, bytes_of("img"), 3);
        EXPECT(wait_jobs(b, &bad, 1), "%s: bad gets the job", NAMES[how]);
        fake_ready(&good, "encode", 1);
        EXPECT(wait_alive(b, 2), "%s: good registers", NAMES[how]);
        misbehave(&bad, (misbehaviour)how, id);
        EXPECT(wait_jobs(b, &good, 1) && good.jobs[0] == id, "%s: the job moves to the good worker", NAMES[how]);
        EXPECT(mm_pool_broker_workers_alive(b) == 1, "%s: the bad worker is dropped", NAMES[how]);
        fake_result(&good, id, 1, 1, "good", 4);
        mm_pool_result r;
        EXPECT(wait_result(b, &r) && r.job_id == id && r.status == MM_OK, "%s: the job completes", NAMES[how]);
        free(r.payload);
        fake_close(&bad);
        fake_close(&good);
        mm_pool_broker_free(b);
    }
}

static void test_refusals_at_ready(void) {
    mm_pool_settings s = quiet_settings();
    mm_pool_broker *b = broker_new(&s, NULL);
    fake wrong_pool, zero_cap, unregistered, sleepy;
    fake_open(&wrong_pool, "wrong-pool");
    fake_open(&zero_cap, "zero-capacity");
    fake_open(&unregistered, "never-ready");
    fake_open(&sleepy, "sleepy");
    fake_ready(&wrong_pool, "decode", 1);
    fake_ready(&zero_cap, "encode", 0);
    /* a heartbeat of 24 days: silent for ever, never declared dead */
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = T_READY, h.pool = "encode", h.worker = "sleepy", h.capacity = 1, h.heartbeat_ms = 2147483647;
    fake_send(&sleepy, &h, NULL, 0);
    fake_simple(&unregistered, T_HEARTBEAT);
    fake_result(&unregistered, 1, 0, 0, "x", 1);
    mm_pool_broker_submit(b, 1, NULL, bytes_of("img"), 3);
    EXPECT(results_during(b, 30) == 0, "nothing answered");
    mm_pool_stats st;
    mm_pool_broker_stats(b, &st);
    EXPECT(st.workers_alive == 0 && st.jobs_queued == 1, "no worker registered (alive %d, queued %d)",
           st.workers_alive, st.jobs_queued);
    fake_close(&wrong_pool);
    fake_close(&zero_cap);
    fake_close(&unregistered);
    fake_close(&sleepy);
    mm_pool_broker_free(b);
}

static void test_bye_requeues_at_once(void) {
    mm_pool_settings s = quiet_settings(); /* no timer could move the job */
    mm_pool_broker *b = broker_new(&s, NULL);
    fake leaving, staying;
    fake_open(&leaving, "leaving");
    fake_open(&staying, "staying");
    fake_ready(&leaving, "encode", 1);
    EXPECT(wait_alive(b, 1), "leaving registers");
    mm_pool_broker_submit(b, 5, NULL, bytes_of("img"), 3);
    EXPECT(wait_jobs(b, &leaving, 1), "leaving gets the job");
    fake_ready(&staying, "encode", 1);
    EXPECT(wait_alive(b, 2), "staying registers");
    mm_pool_broker_submit(b, 6, NULL, bytes_of("img"), 3);
    EXPECT(wait_jobs(b, &staying, 1) && staying.jobs[0] == 6, "staying gets the next job");
    mm_pool_broker_submit(b, 7, NULL, bytes_of("img"), 3); /* waits: both are full */
    fake_simple(&leaving, T_BYE);
    mm_pool_stats st;
    for (int i = 0; i < MAX_STEPS && mm_pool_broker_workers_alive(b) != 1; i++) step(b);
    mm_pool_broker_stats(b, &st);
    EXPECT(st.workers_alive == 1 && st.redispatches == 1 && st.jobs_queued == 2,
           "BYE at once: alive %d redispatches %llu queued %d", st.workers_alive, (unsigned long long)st.redispatches,
           st.jobs_queued);
    fake_result(&staying, 6, 0, 0, "six", 3);
    EXPECT(wait_jobs(b, &staying, 2) && staying.jobs[1] == 5, "the re-queued job goes before the waiting one");
    fake_close(&leaving);
    fake_close(&staying);
    mm_pool_broker_free(b);
}

/* "busy" is no verdict: the job is queued again and goes elsewhere, the worker stays
 * registered but is not sent jobs for a while, and the request gets the real answer. */
static void test_busy_requeues(void) {
    mm_pool_settings s = quiet_settings();
    mm_pool_broker *b = broker_new(&s, NULL);
    fake full, other;
    fake_open(&full, "full");
    fake_open(&other, "other");
    fake_ready(&full, "encode", 1);
    EXPECT(wait_alive(b, 1), "full registers");
    mm_pool_broker_submit(b, 5, NULL, bytes_of("img"), 3);
    EXPECT(wait_jobs(b, &full, 1) && full.jobs[0] == 5, "full gets job 5");
    fake_error(&full, 5, MM_ERR_BUSY, "worker busy: 1 jobs queued or running (capacity 1)");
    EXPECT(results_during(b, 20) == 0, "\"busy\" is not handed over as the job's answer");
    fake_drain(&full);
    EXPECT(full.n_jobs == 1, "the busy worker is not sent the job again at once (%d jobs)", full.n_jobs);
    fake_ready(&other, "encode", 1);
    EXPECT(wait_jobs(b, &other, 1) && other.jobs[0] == 5, "job 5 goes to the other worker");
    fake_result(&other, 5, 0, 0, "img", 3);
    mm_pool_result r;
    EXPECT(wait_result(b, &r) && r.job_id == 5 && r.status == MM_OK, "the real answer arrives");
    free(r.payload);
    mm_pool_stats st;
    mm_pool_broker_stats(b, &st);
    EXPECT(st.workers_alive == 2 && st.redispatches == 1, "busy is no fault: alive %d, redispatches %llu",
           st.workers_alive, (unsigned long long)st.redispatches);
    fake_close(&full);
    fake_close(&other);
    mm_pool_broker_free(b);
}

static void test_no_worker_then_one(void) {
    mm_pool_settings s = quiet_settings();
    mm_pool_broker *b = broker_new(&s, NULL);
    mm_pool_broker_submit(b, 1, NULL, bytes_of("a"), 1);
    mm_pool_broker_submit(b, 2, NULL, bytes_of("b"), 1);
    EXPECT(mm_pool_broker_submit(b, 2, NULL, bytes_of("b"), 1) == MM_ERR_INVALID, "a duplicate id is refused");
    EXPECT(results_during(b, 20) == 0, "no worker: nothing comes back");
    mm_pool_stats st;
    mm_pool_broker_stats(b, &st);
    EXPECT(st.jobs_queued == 2 && st.workers_alive == 0, "jobs wait in the queue (%d)", st.jobs_queued);
    fake w;
    fake_open(&w, "late-comer");
    fake_ready(&w, "encode", 2);
    EXPECT(wait_jobs(b, &w, 2) && w.jobs[0] == 1 && w.jobs[1] == 2, "queued jobs go out in order on arrival");
    fake_result(&w, 1, 0, 0, "a", 1);
    fake_result(&w, 2, 0, 0, "b", 1);
    mm_pool_result r1, r2;
    EXPECT(wait_result(b, &r1) && wait_result(b, &r2), "both answered");
    free(r1.payload);
    free(r2.payload);
    fake_close(&w);
    mm_pool_broker_free(b);
}

static void test_error_result_passes_through(void) {
    mm_pool_settings s = quiet_settings();
    mm_pool_broker *b = broker_new(&s, check_four);
    fake w;
    fake_open(&w, "refuser");
    fake_ready(&w, "encode", 1);
    mm_pool_broker_submit(b, 9, NULL, bytes_of("not an image"), 12);
    EXPECT(wait_jobs(b, &w, 1), "job sent");
    fake_error(&w, 9, MM_ERR_FORMAT, "not a PNG");
    mm_pool_result r;
    EXPECT(wait_result(b, &r) && r.job_id == 9 && r.status == MM_ERR_FORMAT && strcmp(r.error, "not a PNG") == 0 &&
               !r.payload,
           "a worker's refusal reaches poll with its status and message");
    EXPECT(mm_pool_broker_workers_alive(b) == 1, "refusing bad input is not a fault");
    fake_close(&w);
    mm_pool_broker_free(b);
}

/* ------------------------------------------------------------------ encoder pool */

enum { ENC_TOKENS = 2, ENC_DIM = 3 };

static mm_encoder_pool *encoder_pool_new(int32_t cache_mb) {
    mm_encoder_pool_params p = {.pool = quiet_settings(), .n_tokens = ENC_TOKENS, .dim = ENC_DIM,
                                .embed_cache_mb = cache_mb};
    mm_encoder_pool *enc = NULL;
    EXPECT(mm_encoder_pool_init(&p, &enc) == MM_OK, "encoder pool init: %s", mm_error_last());
    return enc;
}

/* Polls enc (which pumps) until a result, draining f meanwhile. */
static int encoder_wait(mm_encoder_pool *enc, fake *f, mm_encode_result *r) {
    for (int i = 0; i < MAX_STEPS; i++) {
        if (mm_encoder_pool_poll(enc, r)) return 1;
        if (f) fake_drain(f);
        usleep(1000);
    }
    return 0;
}

static void encoder_pump_while(mm_encoder_pool *enc, fake *f, int steps) {
    mm_encode_result r;
    for (int i = 0; i < steps; i++) {
        while (mm_encoder_pool_poll(enc, &r)) {
            EXPECT(0, "unexpected result for job %llu", (unsigned long long)r.job_id);
            free(r.tokens);
        }
        fake_drain(f);
        usleep(1000);
    }
}

static void test_encoder_pool_cache(void) {
    mm_encoder_pool *enc = encoder_pool_new(1);
    fake w;
    fake_open(&w, "encoder");
    fake_ready(&w, "encode", 4);
    const uint8_t image[] = "same image bytes";
    const float tokens[ENC_TOKENS * ENC_DIM] = {1, 2, 3, 4, 5, 6};
    uint8_t key[MM_EMBED_KEY_BYTES], want[MM_EMBED_KEY_BYTES];
    mm_encoder_pool_submit(enc, 1, image, sizeof image, key);
    crypto_generichash(want, sizeof want, image, sizeof image, NULL, 0);
    EXPECT(!memcmp(key, want, sizeof key), "submit reports the image's BLAKE2b-256 (the prefix cache's key)");
    mm_encoder_pool_submit(enc, 2, image, sizeof image, key); /* coalesced with 1 */
    encoder_pump_while(enc, &w, 30);
    EXPECT(w.n_jobs == 1, "the same bytes twice: one job on the wire (got %d)", w.n_jobs);
    EXPECT(w.last_len == sizeof image && memcmp(w.last_payload, image, sizeof image) == 0, "image bytes travel");
    fake_result(&w, w.jobs[0], ENC_TOKENS, ENC_DIM, tokens, sizeof tokens);
    mm_encode_result r1 = {0}, r2 = {0};
    EXPECT(encoder_wait(enc, &w, &r1) && encoder_wait(enc, &w, &r2), "both jobs answered");
    EXPECT((r1.job_id == 1 && r2.job_id == 2) || (r1.job_id == 2 && r2.job_id == 1), "ids %llu %llu",
           (unsigned long long)r1.job_id, (unsigned long long)r2.job_id);
    EXPECT(r1.status == MM_OK && r2.status == MM_OK && r1.tokens && r2.tokens && r1.tokens != r2.tokens &&
               memcmp(r1.tokens, tokens, sizeof tokens) == 0 && memcmp(r2.tokens, tokens, sizeof tokens) == 0,
           "identical tokens, each its own buffer");
    free(r1.tokens);
    free(r2.tokens);

    mm_encoder_pool_submit(enc, 3, image, sizeof image, key); /* now from the cache */
    mm_encode_result r3 = {0};
    EXPECT(mm_encoder_pool_poll(enc, &r3) && r3.job_id == 3 && r3.status == MM_OK &&
               memcmp(r3.tokens, tokens, sizeof tokens) == 0,
           "a cached image is answered at once");
    free(r3.tokens);
    encoder_pump_while(enc, &w, 20);
    EXPECT(w.n_jobs == 1, "and without a job (jobs on the wire %d)", w.n_jobs);

    /* A refused image is not cached: asked again, it goes to a worker again. */
    const uint8_t bad[] = "not an image";
    mm_encoder_pool_submit(enc, 4, bad, sizeof bad, key);
    for (int i = 0; i < MAX_STEPS && w.n_jobs < 2; i++) encoder_pump_while(enc, &w, 1);
    EXPECT(w.n_jobs == 2, "the new image goes out");
    fake_error(&w, w.jobs[1], MM_ERR_FORMAT, "not a PNG");
    mm_encode_result r4 = {0};
    EXPECT(encoder_wait(enc, &w, &r4) && r4.job_id == 4 && r4.status == MM_ERR_FORMAT && !r4.tokens &&
               strstr(r4.error, "not a PNG"),
           "the worker's FORMAT reaches the caller");
    mm_encoder_pool_submit(enc, 5, bad, sizeof bad, key);
    for (int i = 0; i < MAX_STEPS && w.n_jobs < 3; i++) encoder_pump_while(enc, &w, 1);
    EXPECT(w.n_jobs == 3, "errors are not cached");
    mm_encoder_pool_cancel(enc, 5); /* its answer is dropped */
    fake_error(&w, w.jobs[2], MM_ERR_FORMAT, "not a PNG");
    encoder_pump_while(enc, &w, 20);

    mm_encoder_pool_stats st;
    mm_encoder_pool_get_stats(enc, &st);
    EXPECT(st.cache_hits == 1 && st.coalesced == 1 && st.cache_entries == 1, "hits %llu coalesced %llu entries %d",
           (unsigned long long)st.cache_hits, (unsigned long long)st.coalesced, st.cache_entries);
    fake_close(&w);
    mm_encoder_pool_free(enc);
}

static void test_encoder_pool_wrong_shape(void) {
    mm_encoder_pool *enc = encoder_pool_new(0);
    fake bad, good;
    fake_open(&bad, "wrong-model");
    fake_open(&good, "right-model");
    fake_ready(&bad, "encode", 1);
    const uint8_t image[] = "img";
    uint8_t key[MM_EMBED_KEY_BYTES];
    mm_encoder_pool_submit(enc, 1, image, sizeof image, key);
    for (int i = 0; i < MAX_STEPS && bad.n_jobs < 1; i++) encoder_pump_while(enc, &bad, 1);
    EXPECT(bad.n_jobs == 1, "bad gets the job");
    fake_ready(&good, "encode", 1);
    encoder_pump_while(enc, &good, 10);
    float wrong[ENC_TOKENS * (ENC_DIM + 1)] = {0};
    fake_result(&bad, bad.jobs[0], ENC_TOKENS, ENC_DIM + 1, wrong, sizeof wrong);
    for (int i = 0; i < MAX_STEPS && good.n_jobs < 1; i++) encoder_pump_while(enc, &good, 1);
    EXPECT(good.n_jobs == 1, "a result of the wrong shape sends the job elsewhere");
    const float tokens[ENC_TOKENS * ENC_DIM] = {0.5f, 0, 0, 0, 0.5f, 0};
    fake_result(&good, good.jobs[0], ENC_TOKENS, ENC_DIM, tokens, sizeof tokens);
    mm_encode_result r = {0};
    EXPECT(encoder_wait(enc, &good, &r) && r.job_id == 1 && r.status == MM_OK && r.tokens &&
               memcmp(r.tokens, tokens, sizeof tokens) == 0,
           "and it completes there");
    free(r.tokens);
    mm_encoder_pool_stats st;
    mm_encoder_pool_get_stats(enc, &st);
    EXPECT(st.pool.workers_alive == 1 && st.pool.workers_dropped == 1, "the wrong model is dropped");
    fake_close(&bad);
    fake_close(&good);
    mm_encoder_pool_free(enc);
}

/* ------------------------------------------------------------------ decoder pool */

/* The first 24 bytes of a PNG: signature, IHDR length and type, width, height. */
static size_t png_head(uint8_t *out, uint32_t w, uint32_t h) {
    static const uint8_t HEAD[16] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
    memcpy(out, HEAD, sizeof HEAD);
    for (int i = 0; i < 4; i++) out[16 + i] = (uint8_t)(w >> (24 - 8 * i)), out[20 + i] = (uint8_t)(h >> (24 - 8 * i));
    return 24;
}

static void decoder_result(fake *f, uint64_t job_id, int32_t width, int32_t height, const uint8_t *png, size_t len) {
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = T_RESULT, h.job_id = job_id, h.width = width, h.height = height;
    fake_send(f, &h, png, len);
}

static int decoder_wait(mm_decoder_pool *d, fake *f, mm_decode_result *r) {
    for (int i = 0; i < MAX_STEPS; i++) {
        if (mm_decoder_pool_poll(d, r)) return 1;
        fake_drain(f);
        usleep(1000);
    }
    return 0;
}

static void test_decoder_pool(void) {
    mm_pool_settings s = quiet_settings();
    s.zmq_ctx = g_ctx;
    mm_decoder_pool *d = NULL;
    EXPECT(mm_decoder_pool_init(&s, 2, 2, &d) == MM_OK, "decoder pool init: %s", mm_error_last());
    fake liar, honest;
    fake_open(&liar, "liar");
    fake_open(&honest, "honest");
    pool_header ready = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    ready.type = T_READY, ready.pool = (char *)"decode", ready.capacity = 1;
    fake_send(&liar, &ready, NULL, 0);
    const float tokens[4] = {1, -1, 0.25f, 8};
    mm_image_params how = {.steps = 20, .guidance = 7.5f, .sampler = MM_DIFFUSION_SAMPLER_DDIM, .seed = 1234};
    EXPECT(mm_decoder_pool_submit(d, 77, tokens, &how) == MM_OK, "submit");
    mm_decode_result r = {0};
    for (int i = 0; i < MAX_STEPS && liar.n_jobs < 1; i++) {
        mm_decoder_pool_poll(d, &r);
        fake_drain(&liar);
        usleep(1000);
    }
    EXPECT(liar.n_jobs == 1 && liar.last_job, "the job reaches the worker");
    if (liar.last_job) {
        const pool_header *j = liar.last_job;
        EXPECT(j->job_id == 77 && j->steps == 20 && j->guidance == 7.5f && strcmp(j->sampler, "ddim") == 0 &&
                   j->seed == 1234 && j->n_tokens == 2 && j->dim == 2 && strcmp(j->pool, "decode") == 0,
               "the JOB header carries the settings and the shape");
        EXPECT(liar.last_len == sizeof tokens && memcmp(liar.last_payload, tokens, sizeof tokens) == 0,
               "the tokens are the payload");
    }
    fake_send(&honest, &ready, NULL, 0);
    int early = 0;
    for (int i = 0; i < MAX_STEPS && mm_decoder_pool_workers_alive(d) < 2; i++) {
        early += mm_decoder_pool_poll(d, &r);
        usleep(1000);
    }
    uint8_t png[32];
    size_t n = png_head(png, 64, 64);
    decoder_result(&liar, 77, 32, 32, png, n); /* claims 32x32 */
    for (int i = 0; i < MAX_STEPS && honest.n_jobs < 1; i++) {
        early += mm_decoder_pool_poll(d, &r);
        fake_drain(&honest);
        usleep(1000);
    }
    EXPECT(early == 0, "no result before the honest answer (got %d)", early);
    EXPECT(honest.n_jobs == 1 && mm_decoder_pool_workers_alive(d) == 1, "a PNG of the wrong size drops the worker");
    decoder_result(&honest, 77, 64, 64, png, n);
    EXPECT(decoder_wait(d, &honest, &r) && r.job_id == 77 && r.status == MM_OK && r.png_len == n &&
               memcmp(r.png, png, n) == 0 && r.width == 64 && r.height == 64,
           "the honest PNG is handed over");
    free(r.png);
    fake_close(&liar);
    fake_close(&honest);
    mm_decoder_pool_free(d);
}

/* ------------------------------------------------------------------ embedding cache */

static void test_embed_cache_lru(void) {
    enum { N = 256 }; /* floats per entry: 1 KiB */
    mm_embed_cache *c = NULL;
    EXPECT(mm_embed_cache_init(3 * N * sizeof(float), N, &c) == MM_OK, "init");
    uint8_t keys[4][MM_EMBED_KEY_BYTES], again[MM_EMBED_KEY_BYTES];
    float v[4][N];
    const char *images[4] = {"image one", "image two", "image three", "image four"};
    for (int k = 0; k < 4; k++) {
        mm_embed_cache_key((const uint8_t *)images[k], strlen(images[k]), keys[k]);
        for (int i = 0; i < N; i++) v[k][i] = (float)(k * 1000 + i);
    }
    mm_embed_cache_key((const uint8_t *)images[0], strlen(images[0]), again);
    EXPECT(memcmp(again, keys[0], sizeof again) == 0 && memcmp(keys[0], keys[1], sizeof again) != 0,
           "equal bytes give equal keys, different bytes different ones");
    for (int k = 0; k < 3; k++) mm_embed_cache_put(c, keys[k], v[k]);
    EXPECT(mm_embed_cache_get(c, keys[0]) != NULL, "one is in (and now the most recent)");
    mm_embed_cache_put(c, keys[3], v[3]); /* over the bound: two, the least recent, goes */
    const float *one = mm_embed_cache_get(c, keys[0]);
    EXPECT(one && memcmp(one, v[0], sizeof v[0]) == 0, "one kept, values intact");
    EXPECT(mm_embed_cache_get(c, keys[1]) == NULL, "two evicted");
    EXPECT(mm_embed_cache_get(c, keys[2]) && mm_embed_cache_get(c, keys[3]), "three and four kept");
    mm_embed_cache_stats st;
    mm_embed_cache_stats_get(c, &st);
    EXPECT(st.entries == 3 && st.bytes == 3 * N * sizeof(float) && st.evictions == 1 && st.hits == 4 &&
               st.misses == 1,
           "entries %d bytes %zu evictions %llu hits %llu misses %llu", st.entries, st.bytes,
           (unsigned long long)st.evictions, (unsigned long long)st.hits, (unsigned long long)st.misses);
    mm_embed_cache_free(c);

    EXPECT(mm_embed_cache_init(0, N, &c) == MM_OK, "an empty cache");
    mm_embed_cache_put(c, keys[0], v[0]);
    EXPECT(mm_embed_cache_get(c, keys[0]) == NULL, "a cache of 0 bytes stores nothing");
    mm_embed_cache_free(c);
}

int main(void) {
    g_ctx = zmq_ctx_new();
    test_embed_cache_lru();
    test_least_loaded_and_batching();
    test_heartbeats_sent();
    test_silent_worker_dies();
    test_job_timeout_busy_worker();
    test_job_timeout_goes_elsewhere();
    test_cancel();
    test_unasked_cancelled_is_requeued();
    test_misbehaving_workers();
    test_refusals_at_ready();
    test_bye_requeues_at_once();
    test_busy_requeues();
    test_no_worker_then_one();
    test_error_result_passes_through();
    test_encoder_pool_cache();
    test_encoder_pool_wrong_shape();
    test_decoder_pool();
    zmq_ctx_term(g_ctx);
    return mm_test_finish("test_pool_broker");
}
