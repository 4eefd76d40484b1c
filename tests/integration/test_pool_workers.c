/* The pool workers on their own: this test plays the coordinator with a ROUTER of its
 * own on a free loopback port and runs the real mm-encoder / mm-decoder binaries:
 *   test_pool_workers encode MM_ENCODER                  READY (pool, capacity, heartbeat, routing id);
 *                                                        example.png -> [64, 48] tokens equal to
 *                                                        mm_siglip_encode_image_bytes in this process;
 *                                                        garbage / truncated image, JOB without payload
 *                                                        -> error RESULTs, an undecodable header is not
 *                                                        answered, and the worker keeps serving;
 *                                                        heartbeats while idle
 *   test_pool_workers decode MM_DECODER MM_DECODE MM_RUN tokens from mm-run --visual-tokens-out ->
 *                                                        PNG byte-identical to mm-decode's file; wrong
 *                                                        shape / steps / sampler / NaN -> INVALID;
 *                                                        CANCEL: a running 999-step job stops at a step
 *                                                        k < 999, a queued one is answered at once and
 *                                                        never run (the worker's log says so)
 *   test_pool_workers reconnect MM_ENCODER               ROUTER closed and bound again on the same port:
 *                                                        READY again under the same routing id, jobs run
 * Every mode ends with SIGTERM: BYE arrives and the worker exits with 0 (decode: in the
 * middle of a 999-step job, which stops at its next step). Bounds on waits
 * are generous (a 2-core machine shared with other tests); nothing asserts a duration. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/free_port.h"
#include "common/status.h"
#include "model/decoder.h"
#include "model/siglip.h"
#include "proto/internal.pb-c.h"
#include "tests/testutil.h"

#define HEARTBEAT_MS 50
#define LOAD_WAIT_S 60.0  /* a worker loading its model on a busy machine */
#define REPLY_WAIT_S 60.0

typedef Metamorph__Internal__PoolHeader pool_header;

enum {
    READY = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_READY,
    HEARTBEAT = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT,
    JOB = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB,
    RESULT = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_RESULT,
    BYE = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_BYE,
};

/* The coordinator's side of one pool, as far as this test needs it. */
typedef struct {
    Metamorph__Internal__PoolHeader *h; /* unpacked header (NULL if undecodable) */
    uint8_t *payload;                   /* [len] copy of the second frame, NULL if none */
    size_t len;
    int frames;                         /* frames after the routing id */
} pool_msg;

#define STASH 8

typedef struct {
    void *zctx, *router;
    char endpoint[128];   /* tcp://127.0.0.1:PORT */
    char worker_id[256];  /* routing id of the worker (once heard) */
    double last_beat;     /* our last heartbeat to it */
    int heartbeats;       /* heartbeats received from it */
    pool_msg stash[STASH]; /* RESULTs that came while waiting for another */
} fake_coordinator;

static int router_bind(fake_coordinator *fc, const char *endpoint) {
    fc->router = zmq_socket(fc->zctx, ZMQ_ROUTER);
    int zero = 0, one = 1;
    zmq_setsockopt(fc->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(fc->router, ZMQ_ROUTER_HANDOVER, &one, sizeof one);
    for (double t0 = mm_now_s(); mm_now_s() - t0 < 10.0; usleep(50000)) /* the old port may linger a moment */
        if (zmq_bind(fc->router, endpoint) == 0) {
            size_t n = sizeof fc->endpoint;
            zmq_getsockopt(fc->router, ZMQ_LAST_ENDPOINT, fc->endpoint, &n);
            return 0;
        }
    fprintf(stderr, "bind %s: %s\n", endpoint, zmq_strerror(errno));
    return -1;
}

static void router_close(fake_coordinator *fc) {
    zmq_close(fc->router);
    fc->router = NULL;
}

/* Sends [worker id][header][payload] (payload NULL: no payload frame; has_payload with
 * len 0 sends an empty frame). */
static int send_to_worker(fake_coordinator *fc, const void *hdr, size_t hdr_len, const void *payload, size_t len,
                          int has_payload) {
    if (zmq_send(fc->router, fc->worker_id, strlen(fc->worker_id), ZMQ_SNDMORE) < 0) return -1;
    if (zmq_send(fc->router, hdr, hdr_len, has_payload ? ZMQ_SNDMORE : 0) < 0) return -1;
    if (has_payload && zmq_send(fc->router, payload, len, 0) < 0) return -1;
    return 0;
}

static int send_header(fake_coordinator *fc, const pool_header *h, const void *payload, size_t len, int has_payload) {
    uint8_t buf[1024];
    size_t n = metamorph__internal__pool_header__pack(h, buf);
    return send_to_worker(fc, buf, n, payload, len, has_payload);
}

static void msg_free(pool_msg *m) {
    if (m->h) metamorph__internal__pool_header__free_unpacked(m->h, NULL);
    free(m->payload);
    memset(m, 0, sizeof *m);
}

/* Waits up to timeout_s for a message of type `want` (job_id too when want is RESULT;
 * -1: none, just listen), heartbeating the worker meanwhile and counting its
 * heartbeats. 0 on success. */
static int wait_for(fake_coordinator *fc, int want, uint64_t job_id, double timeout_s, pool_msg *out) {
    memset(out, 0, sizeof *out);
    for (int i = 0; i < STASH; i++)
        if (want == RESULT && fc->stash[i].h && fc->stash[i].h->job_id == job_id) {
            *out = fc->stash[i];
            memset(&fc->stash[i], 0, sizeof fc->stash[i]);
            return 0;
        }
    for (double t0 = mm_now_s(); mm_now_s() - t0 < timeout_s;) {
        if (fc->worker_id[0] && mm_now_s() - fc->last_beat >= HEARTBEAT_MS * 1e-3) {
            pool_header hb = METAMORPH__INTERNAL__POOL_HEADER__INIT;
            hb.type = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT;
            send_header(fc, &hb, NULL, 0, 0);
            fc->last_beat = mm_now_s();
        }
        zmq_pollitem_t it = {fc->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, HEARTBEAT_MS / 2) <= 0) continue;
        char id[256];
        int idn = zmq_recv(fc->router, id, sizeof id - 1, 0);
        if (idn < 0) continue;
        id[idn] = '\0';
        pool_msg m = {0};
        int more = 1;
        while (more) {
            zmq_msg_t f;
            zmq_msg_init(&f);
            zmq_msg_recv(&f, fc->router, 0);
            more = zmq_msg_more(&f);
            if (m.frames == 0) {
                m.h = metamorph__internal__pool_header__unpack(NULL, zmq_msg_size(&f), zmq_msg_data(&f));
            } else if (m.frames == 1) {
                m.len = zmq_msg_size(&f);
                m.payload = malloc(m.len ? m.len : 1);
                memcpy(m.payload, zmq_msg_data(&f), m.len);
            }
            m.frames++;
            zmq_msg_close(&f);
        }
        if (!m.h) {
            fprintf(stderr, "undecodable header from %s\n", id);
            msg_free(&m);
            continue;
        }
        snprintf(fc->worker_id, sizeof fc->worker_id, "%s", id);
        if ((int)m.h->type == HEARTBEAT) fc->heartbeats++;
        if ((int)m.h->type == want && (want != RESULT || m.h->job_id == job_id)) {
            *out = m;
            return 0;
        }
        int kept = 0;
        for (int i = 0; i < STASH && !kept && (int)m.h->type == RESULT; i++)
            if (!fc->stash[i].h) fc->stash[i] = m, kept = 1;
        if (!kept) msg_free(&m);
    }
    if (want >= 0)
        fprintf(stderr, "no message of type %d (job %llu) within %.0f s\n", want, (unsigned long long)job_id, timeout_s);
    return -1;
}

static pid_t spawn(char *const argv[], const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        if (log && !freopen(log, "w", stderr)) _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Status of pid once it exits within timeout_s; -1 (and SIGKILL) if it does not. */
static int wait_exit(pid_t pid, double timeout_s) {
    for (double t0 = mm_now_s(); mm_now_s() - t0 < timeout_s; usleep(20000)) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return st;
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* Starts a worker against fc (its log to the file log, or NULL: ours) and checks its READY. */
static pid_t start_worker(fake_coordinator *fc, const char *bin, const char *model, const char *pool,
                          const char *name, const char *log) {
    char hb[16];
    snprintf(hb, sizeof hb, "%d", HEARTBEAT_MS);
    char *argv[] = {(char *)bin, "--model", (char *)model, "--connect", fc->endpoint, "--threads", "1",
                    "--capacity", "2", "--name", (char *)name, "--heartbeat-ms", hb, NULL};
    pid_t pid = spawn(argv, log);
    pool_msg m;
    int ok = wait_for(fc, READY, 0, LOAD_WAIT_S, &m) == 0;
    EXPECT(ok, "%s sent READY", bin);
    if (!ok) return pid;
    EXPECT(!strcmp(m.h->pool, pool), "pool '%s'", m.h->pool);
    EXPECT(!strcmp(m.h->worker, name) && !strcmp(fc->worker_id, name), "name '%s', routing id '%s'", m.h->worker,
           fc->worker_id);
    EXPECT(m.h->capacity == 2 && m.h->heartbeat_ms == HEARTBEAT_MS, "capacity %d, heartbeat %d", m.h->capacity,
           m.h->heartbeat_ms);
    msg_free(&m);
    return pid;
}

/* SIGTERM: BYE arrives, the worker exits with 0. */
static void stop_worker(fake_coordinator *fc, pid_t pid) {
    kill(pid, SIGTERM);
    pool_msg m;
    EXPECT(wait_for(fc, BYE, 0, 10.0, &m) == 0, "BYE after SIGTERM");
    msg_free(&m);
    int st = wait_exit(pid, 30.0);
    EXPECT(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker exit status %d", st);
}

/* A JOB (payload NULL: no payload frame) and its RESULT. 0 when the RESULT came. */
static int run_job(fake_coordinator *fc, pool_header *job, const void *payload, size_t len, pool_msg *out) {
    job->type = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB;
    if (send_header(fc, job, payload, len, payload != NULL) != 0) return -1;
    return wait_for(fc, RESULT, job->job_id, REPLY_WAIT_S, out);
}

/* Errors are for clients: the why, no "file.c:123: " of ours. */
static int has_location(const char *msg) {
    const char *colon = strstr(msg, ".c:");
    return colon && colon[3] >= '0' && colon[3] <= '9';
}

static void expect_error(const pool_msg *m, mm_status status, const char *needle) {
    EXPECT(m->h && m->h->error[0] && (int)m->h->error_status == (int)status, "error '%s' status %d (want %d)",
           m->h ? m->h->error : "", m->h ? m->h->error_status : -1, (int)status);
    EXPECT(m->h && strstr(m->h->error, needle) && !has_location(m->h->error), "error '%s' names '%s', no location",
           m->h ? m->h->error : "", needle);
    EXPECT(m->len == 0, "error RESULT with a %zu-byte payload", m->len);
}

/* ---------------------------------------------------------------- encode */

static void test_encode(fake_coordinator *fc, const char *encoder_bin) {
    const char *model = mm_asset_path("tiny");
    size_t png_len = 0;
    uint8_t *png = (uint8_t *)mm_test_read_file(mm_asset_path("images/example.png"), &png_len);
    EXPECT(png != NULL, "read example.png");
    if (!png) return;

    /* the reference: the same function in this process */
    mm_backend *be = NULL;
    mm_siglip *sig = NULL;
    char vdir[1024];
    snprintf(vdir, sizeof vdir, "%s/vision", model);
    EXPECT(mm_backend_init("cpu", 1, &be) == MM_OK && mm_siglip_load(vdir, be, &sig) == MM_OK, "load %s: %s", vdir,
           mm_error_last());
    if (!sig) return;
    const int32_t T = 64, D = sig->cfg.hidden, S = sig->cfg.image_size;
    float *ref = malloc((size_t)T * D * sizeof(float)), *pixels = malloc((size_t)3 * S * S * sizeof(float));
    EXPECT(mm_siglip_encode_image_bytes(sig, png, png_len, NULL, T, pixels, ref) == MM_OK, "in-process encode: %s",
           mm_error_last());

    pid_t pid = start_worker(fc, encoder_bin, model, "encode", "enc-test", NULL);
    pool_msg m;
    pool_header job = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    job.job_id = 11;
    if (run_job(fc, &job, png, png_len, &m) == 0) {
        EXPECT(!m.h->error[0], "encode error '%s'", m.h->error);
        EXPECT(m.h->n_tokens == T && m.h->dim == D && D == 48, "shape [%d, %d]", m.h->n_tokens, m.h->dim);
        EXPECT(m.len == (size_t)T * D * sizeof(float), "payload %zu bytes", m.len);
        if (m.len == (size_t)T * D * sizeof(float)) {
            float diff = mm_max_abs_diff((const float *)m.payload, ref, (size_t)T * D);
            EXPECT(diff == 0.0f, "tokens differ from the in-process path by %g", diff);
        }
    } else {
        EXPECT(0, "no RESULT for job 11");
    }
    msg_free(&m);

    static const char garbage[] = "this is not an image, only some words";
    job.job_id = 12;
    if (run_job(fc, &job, garbage, sizeof garbage - 1, &m) == 0) expect_error(&m, MM_ERR_FORMAT, "not a PNG or JPEG");
    msg_free(&m);
    job.job_id = 13;
    if (run_job(fc, &job, png, png_len / 3, &m) == 0) expect_error(&m, MM_ERR_FORMAT, "PNG");
    msg_free(&m);
    job.job_id = 14;
    if (run_job(fc, &job, NULL, 0, &m) == 0) expect_error(&m, MM_ERR_FORMAT, "no payload");
    msg_free(&m);
    static const uint8_t bad_header[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    EXPECT(send_to_worker(fc, bad_header, sizeof bad_header, png, png_len, 1) == 0, "send a bad header");
    /* no job id to answer with: ignored and logged (a RESULT for a job never sent would
     * make the coordinator drop this worker); the coordinator re-sends on its timeout */
    EXPECT(wait_for(fc, RESULT, 0, 1.0, &m) != 0, "an undecodable header was answered");
    msg_free(&m);

    /* still serving, with the same tokens */
    job.job_id = 15;
    if (run_job(fc, &job, png, png_len, &m) == 0)
        EXPECT(m.len == (size_t)T * D * sizeof(float) && !memcmp(m.payload, ref, m.len), "job 15 tokens");
    else
        EXPECT(0, "no RESULT for job 15");
    msg_free(&m);

    /* heartbeats while idle */
    int before = fc->heartbeats;
    wait_for(fc, -1, 0, 20 * HEARTBEAT_MS * 1e-3, &m); /* nothing to wait for: just listen */
    EXPECT(fc->heartbeats - before >= 3, "%d heartbeats in %d periods", fc->heartbeats - before, 20);

    stop_worker(fc, pid);
    free(ref), free(pixels), free(png);
    mm_siglip_free(sig);
    mm_backend_free(be);
}

/* ---------------------------------------------------------------- decode */

/* 1 once the file at path contains needle (read whole each time: it is small). */
static int log_has(const char *path, const char *needle) {
    size_t n = 0;
    char *text = mm_test_read_file(path, &n);
    int found = 0;
    if (text) {
        char *z = realloc(text, n + 1);
        if (z) z[n] = '\0', found = strstr(z, needle) != NULL, text = z;
    }
    free(text);
    return found;
}

/* Waits (heartbeating the worker) until its log contains needle. */
static int wait_log(fake_coordinator *fc, const char *path, const char *needle, double timeout_s) {
    pool_msg m;
    for (double t0 = mm_now_s(); mm_now_s() - t0 < timeout_s;) {
        if (log_has(path, needle)) return 1;
        wait_for(fc, -1, 0, 0.02, &m); /* listen a moment */
    }
    return log_has(path, needle);
}

static int send_cancel(fake_coordinator *fc, uint64_t job_id) {
    pool_header h = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    h.type = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_CANCEL, h.job_id = job_id;
    return send_header(fc, &h, NULL, 0, 0);
}

/* CANCEL (proto/internal.proto "pools"): job 61 of 999 steps is cancelled once it runs,
 * job 62 queued behind it before it starts. 62 is answered at once and never runs; 61
 * stops at a step k < 999 and says which; the worker then serves on as before. */
static void test_decode_cancel(fake_coordinator *fc, const pool_header *job, const float *tokens, size_t len,
                               const char *log_path, const uint8_t *ref, size_t ref_len) {
    pool_header running = *job, queued = *job;
    running.type = queued.type = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB;
    running.job_id = 61, running.steps = 999, queued.job_id = 62;
    EXPECT(send_header(fc, &running, tokens, len, 1) == 0 && send_header(fc, &queued, tokens, len, 1) == 0,
           "send jobs 61 and 62");
    EXPECT(wait_log(fc, log_path, "job 61 started", REPLY_WAIT_S), "the worker started job 61");
    EXPECT(send_cancel(fc, 62) == 0 && send_cancel(fc, 61) == 0, "send CANCEL 62, CANCEL 61");
    pool_msg m;
    if (wait_for(fc, RESULT, 62, REPLY_WAIT_S, &m) == 0) expect_error(&m, MM_ERR_CANCELLED, "cancelled before it started");
    else EXPECT(0, "no RESULT for the cancelled queued job 62");
    msg_free(&m);
    if (wait_for(fc, RESULT, 61, REPLY_WAIT_S, &m) == 0) {
        expect_error(&m, MM_ERR_CANCELLED, "cancelled after step ");
        int k = -1, n = -1;
        const char *at = m.h && m.h->error ? strstr(m.h->error, "after step ") : NULL;
        EXPECT(at && sscanf(at, "after step %d of %d", &k, &n) == 2 && n == 999 && k >= 1 && k < n,
               "job 61 stopped at step %d of %d ('%s')", k, n, m.h ? m.h->error : "");
    } else {
        EXPECT(0, "no RESULT for the cancelled running job 61");
    }
    msg_free(&m);
    EXPECT(log_has(log_path, "job 62 cancelled before it started: skipped"), "the log says job 62 was skipped");
    EXPECT(log_has(log_path, "job 61 cancelled while running") && log_has(log_path, "job 61 stopped after"),
           "the log says job 61 was stopped");
    /* a CANCEL for a job it does not hold changes nothing; the next job runs as before */
    EXPECT(send_cancel(fc, 61) == 0, "CANCEL of a finished job");
    pool_header again = *job;
    again.job_id = 63;
    if (run_job(fc, &again, tokens, len, &m) == 0)
        EXPECT(!m.h->error[0] && ref && m.len == ref_len && !memcmp(m.payload, ref, ref_len),
               "job 63 after the cancels: the same PNG ('%s')", m.h->error);
    else
        EXPECT(0, "no RESULT for job 63");
    msg_free(&m);
}

static void test_decode(fake_coordinator *fc, const char *decoder_bin, const char *mm_decode, const char *mm_run) {
    char dir[] = "/tmp/mm_pool_test_XXXXXX";
    EXPECT(mkdtemp(dir) != NULL, "temporary directory");
    char tokens_path[256], ref_path[256], decoder_dir[1024];
    snprintf(tokens_path, sizeof tokens_path, "%s/tokens.safetensors", dir);
    snprintf(ref_path, sizeof ref_path, "%s/ref.png", dir);
    snprintf(decoder_dir, sizeof decoder_dir, "%s/decoder", mm_asset_path("tiny"));
    const char *model = mm_asset_path("tiny");

    char *run_argv[] = {(char *)mm_run, "--model", (char *)model, "--prompt", "a red square", "--generate-image",
                        "--max-tokens", "70", "--threads", "1", "--visual-tokens-out", tokens_path, NULL};
    free(mm_test_run_capture(run_argv));
    float *tokens = NULL;
    int64_t n = 0;
    EXPECT(mm_decoder_read_tokens(tokens_path, 48, &tokens, &n) == MM_OK, "tokens from mm-run: %s", mm_error_last());
    if (!tokens) return;
    char *dec_argv[] = {(char *)mm_decode, "--model", (char *)model, "--tokens", tokens_path, "--steps", "3",
                        "--guidance", "5.5", "--sampler", "ddim", "--seed", "7", "--threads", "1", "--out", ref_path,
                        NULL};
    free(mm_test_run_capture(dec_argv));
    size_t ref_len = 0;
    uint8_t *ref = (uint8_t *)mm_test_read_file(ref_path, &ref_len);
    EXPECT(ref && ref_len > 8, "mm-decode wrote %s", ref_path);

    /* the decoder directory itself this time (encode used the model root); its log is
     * read back by the CANCEL case */
    char log_path[256];
    snprintf(log_path, sizeof log_path, "%s/worker.log", dir);
    setenv("MM_LOG_LEVEL", "info", 1);
    pid_t pid = start_worker(fc, decoder_bin, decoder_dir, "decode", "dec-test", log_path);
    const size_t len = (size_t)n * 48 * sizeof(float);
    pool_header job = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    job.job_id = 21, job.n_tokens = (int32_t)n, job.dim = 48, job.steps = 3, job.guidance = 5.5f;
    job.sampler = "ddim", job.seed = 7;
    pool_msg m;
    if (run_job(fc, &job, tokens, len, &m) == 0) {
        EXPECT(!m.h->error[0], "decode error '%s'", m.h->error);
        EXPECT(m.h->width == 64 && m.h->height == 64, "image %dx%d", m.h->width, m.h->height);
        EXPECT(ref && m.len == ref_len && !memcmp(m.payload, ref, ref_len), "PNG (%zu bytes) == mm-decode's (%zu)",
               m.len, ref_len);
    } else {
        EXPECT(0, "no RESULT for job 21");
    }
    msg_free(&m);

    /* wrong shapes and parameters: INVALID, named */
    struct {
        int32_t n_tokens, dim, steps;
        const char *sampler;
        size_t len;
        const char *needle;
    } bad[] = {
        {(int32_t)n, 47, 3, "ddim", (size_t)n * 47 * 4, "width 47"},
        {0, 48, 3, "ddim", 0, "n_tokens 0"},
        {78, 48, 3, "ddim", 78 * 48 * 4, "n_tokens 78"},
        {(int32_t)n, 48, 3, "ddim", len - 4, "payload of"},
        {(int32_t)n, 48, 0, "ddim", len, "steps 0"},
        {(int32_t)n, 48, 1001, "ddim", len, "steps 1001"},
        {(int32_t)n, 48, 3, "euler", len, "unknown sampler"},
    };
    float *zeros = calloc(78 * 48, sizeof(float));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pool_header b = job;
        b.job_id = 30 + i, b.n_tokens = bad[i].n_tokens, b.dim = bad[i].dim, b.steps = bad[i].steps;
        b.sampler = (char *)bad[i].sampler;
        if (run_job(fc, &b, zeros, bad[i].len, &m) == 0) expect_error(&m, MM_ERR_INVALID, bad[i].needle);
        else EXPECT(0, "no RESULT for bad job %zu", i);
        msg_free(&m);
    }
    /* a long job: heartbeats go on while it computes; a second job waits its turn, a
     * third is over the capacity of 2 and is refused at once as BUSY (no verdict) */
    pool_header slow = job, queued = job, over = job;
    slow.job_id = 41, slow.steps = 400, queued.job_id = 42, over.job_id = 43;
    slow.type = queued.type = over.type = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB;
    EXPECT(send_header(fc, &slow, tokens, len, 1) == 0 && send_header(fc, &queued, tokens, len, 1) == 0 &&
           send_header(fc, &over, tokens, len, 1) == 0, "send 3 jobs");
    if (wait_for(fc, RESULT, 43, REPLY_WAIT_S, &m) == 0) expect_error(&m, MM_ERR_BUSY, "busy");
    msg_free(&m);
    int beats = fc->heartbeats;
    EXPECT(wait_for(fc, RESULT, 41, 120.0, &m) == 0 && !m.h->error[0], "long job done");
    EXPECT(fc->heartbeats > beats, "heartbeats while computing: %d", fc->heartbeats - beats);
    msg_free(&m);
    if (wait_for(fc, RESULT, 42, REPLY_WAIT_S, &m) == 0)
        EXPECT(m.len == ref_len && ref && !memcmp(m.payload, ref, ref_len), "queued job: the same PNG");
    else
        EXPECT(0, "no RESULT for the queued job");
    msg_free(&m);

    float *nan_tokens = malloc(len);
    memcpy(nan_tokens, tokens, len);
    nan_tokens[5] = NAN;
    job.job_id = 40;
    if (run_job(fc, &job, nan_tokens, len, &m) == 0) expect_error(&m, MM_ERR_INVALID, "non-finite");
    msg_free(&m);

    test_decode_cancel(fc, &job, tokens, len, log_path, ref, ref_len);

    /* SIGTERM during a long job: it stops at the next step (its result would go nowhere:
     * BYE has sent it elsewhere) instead of holding the worker's exit for all its steps */
    pool_header last = job;
    last.type = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB, last.job_id = 71, last.steps = 999;
    EXPECT(send_header(fc, &last, tokens, len, 1) == 0, "send job 71");
    EXPECT(wait_log(fc, log_path, "job 71 started", REPLY_WAIT_S), "the worker started job 71");
    stop_worker(fc, pid);
    EXPECT(log_has(log_path, "job 71 stopped after"), "SIGTERM stopped the running job 71");
    EXPECT(log_has(log_path, "job 63 started") && !log_has(log_path, "job 62 started"),
           "the cancelled queued job 62 never ran (job 63 after it did)");
    size_t log_len = 0;
    char *log = mm_test_read_file(log_path, &log_len);
    if (mm_test_failed && log) fprintf(stderr, "---- worker log ----\n%.*s----\n", (int)log_len, log);
    free(log);
    free(zeros), free(nan_tokens), free(tokens), free(ref);
    unlink(tokens_path), unlink(ref_path), unlink(log_path), rmdir(dir);
}

/* ---------------------------------------------------------------- reconnect */

static void test_reconnect(fake_coordinator *fc, const char *encoder_bin) {
    pid_t pid = start_worker(fc, encoder_bin, mm_asset_path("tiny"), "encode", "enc-reconnect", NULL);
    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "%s", fc->endpoint);
    router_close(fc); /* the coordinator goes away ... */
    usleep(10 * HEARTBEAT_MS * 1000);
    fc->worker_id[0] = '\0';
    EXPECT(router_bind(fc, endpoint) == 0, "bind %s again", endpoint); /* ... and comes back */
    pool_msg m;
    EXPECT(wait_for(fc, READY, 0, 30.0, &m) == 0, "READY again after the coordinator came back");
    EXPECT(m.h && !strcmp(fc->worker_id, "enc-reconnect"), "same routing id '%s'", fc->worker_id);
    msg_free(&m);
    size_t png_len = 0;
    uint8_t *png = (uint8_t *)mm_test_read_file(mm_asset_path("images/example.png"), &png_len);
    pool_header job = METAMORPH__INTERNAL__POOL_HEADER__INIT;
    job.job_id = 51;
    if (run_job(fc, &job, png, png_len, &m) == 0) EXPECT(!m.h->error[0] && m.h->n_tokens == 64, "job after reconnect");
    else EXPECT(0, "no RESULT after the reconnect");
    msg_free(&m);
    free(png);
    stop_worker(fc, pid);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_pool_workers encode|decode|reconnect BINARIES...\n");
        return 2;
    }
    fake_coordinator fc = {.zctx = zmq_ctx_new()};
    /* a port below the ephemeral range: while the reconnect test has it closed, the
     * worker's retried connects cannot take it as their source port */
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", mm_free_port());
    if (router_bind(&fc, endpoint) != 0) return 1;
    const char *mode = argv[1];
    if (!strcmp(mode, "encode")) test_encode(&fc, argv[2]);
    else if (!strcmp(mode, "decode") && argc >= 5) test_decode(&fc, argv[2], argv[3], argv[4]);
    else if (!strcmp(mode, "reconnect")) test_reconnect(&fc, argv[2]);
    else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    if (fc.router) router_close(&fc);
    for (int i = 0; i < STASH; i++) msg_free(&fc.stash[i]);
    zmq_ctx_term(fc.zctx);
    char name[64];
    snprintf(name, sizeof name, "test_pool_workers %s", mode);
    return mm_test_finish(name);
}
