/* End-to-end tests of the encoder and decoder pools (issue 6). Each mode starts its own
 * `mpiexec mm-coordinator : mm-stage x P` job with real mm-encoder / mm-decoder workers on
 * the tiny model; every PNG is checked against the file mm-decode writes for the visual
 * tokens the service returned, with the same steps, guidance, sampler and seed:
 *   test_pools png_identical COORD STAGE MM_DECODE  generation (Generate and GenerateStream, two samplers)
 *                                                   and an image-in, image-out request: mm-decode's PNG,
 *                                                   the image went through the encoder pool, text answered
 *   test_pools decoder_killed ...                   the only decoder SIGKILLed mid-job while a second one
 *                                                   starts: the request completes with mm-decode's PNG,
 *                                                   the job was sent again once, to the second worker;
 *                                                   then a client hangs up while its image decodes: the
 *                                                   decoder stops between UNet steps (its log says at
 *                                                   which), its slot frees, the next request is served
 *   test_pools encoder_killed ...                   the only encoder, stopped while holding the job, is
 *                                                   SIGKILLed while a second one starts: same answer as
 *                                                   the same request before
 *   test_pools empty_pools ...                      no worker in either pool: image requests fail with
 *                                                   UNAVAILABLE naming the pool at their deadline, text is
 *                                                   served, an image over pool_max_message_mb is
 *                                                   INVALID_ARGUMENT; workers join: the same requests are
 *                                                   served
 *   test_pools bad_workers ...                      fake decoders (garbage, a wrong job id, not a PNG) are
 *                                                   each dropped with an error line; every request still
 *                                                   completes with mm-decode's PNG; still SERVING
 *   test_pools concurrent16 ...                     16 generation requests at once over 2 decoders: one
 *                                                   right PNG each, every decode run exactly once
 * Waits are bounded generously and nothing asserts a duration (a shared 2-core machine). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "common/safetensors.h"
#include "proto/internal.pb-c.h"
#include "service.h"
#include "common/curve_keys.h"
#include "tests/testutil.h"
#include "tools/generate_request.h"

#define MAX_IMAGES 2
#define CALL_TIMEOUT_S 60.0
#define JOIN_WAIT_S 60.0   /* a worker loading its model and joining, on a busy machine */
#define FAST_STEPS 6       /* diffusion steps where the decode's length does not matter */
#define SLOW_STEPS 800     /* ~3 s on the tiny model: long enough to kill a decoder mid-job */

#define WORKERS(pool) "metamorph_pool_workers{pool=\"" pool "\"}"
#define IN_FLIGHT(pool) "metamorph_pool_jobs_in_flight{pool=\"" pool "\"}"
#define REDISPATCHES(pool) "metamorph_pool_redispatches_total{pool=\"" pool "\"}"
#define JOB_DONE " done in " /* a worker's line per finished job: "decode job 3 done in 12 ms, ..." */
#define JOB_STARTED " started (queued " /* "decode job 3 started (queued 0 ms)" */
#define JOB_STOPPED " stopped after "   /* "decode job 3 stopped after 30 ms: cancelled after step 19 of 999 ..." */
#define CANCEL_STEPS 999                /* a decode that cannot end before its client's hang-up reaches it */

/* One user message ([image,] prompt) and the decoder's parameters. */
typedef struct {
    const char *image;      /* file sent as the first part, or NULL */
    const char *prompt;
    int generate_image, max_new;
    int steps;              /* explicit: mm-decode gets the same */
    float guidance;         /* 0: the model's default, for both */
    const char *sampler;    /* NULL: the default, for both */
    uint64_t seed;
} pool_request;

typedef struct {
    int code;
    char msg[512];
    int32_t ids[4096];      /* a visual token as -1 */
    int n_ids;
    char text[16384];
    int n_images;           /* images in the response, or IMAGE_READY events */
    int n_started;          /* IMAGE_STARTED events */
    uint8_t *png[MAX_IMAGES];
    size_t png_len[MAX_IMAGES];
    float *visual[MAX_IMAGES];
    size_t n_visual[MAX_IMAGES];
    int n_tokens[MAX_IMAGES], dim[MAX_IMAGES];
} pool_result;

static const char *example_png(void) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/images/example.png", getenv("MM_ASSETS_DIR"));
    return path;
}

/* ---------------------------------------------------------------- calls */

static uint8_t *pack_request(const pool_request *q, size_t *len) {
    size_t image_len = 0;
    uint8_t *image_bytes = NULL;
    if (q->image) {
        image_bytes = (uint8_t *)mm_test_read_file(q->image, &image_len);
        if (!image_bytes) return NULL;
    }
    const uint8_t *images[1] = {image_bytes};
    Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
    sp.max_new_tokens = q->max_new;
    Metamorph__V1__ImageParams ip = METAMORPH__V1__IMAGE_PARAMS__INIT;
    ip.steps = q->steps, ip.guidance = q->guidance, ip.seed = q->seed, ip.return_visual_tokens = 1;
    ip.sampler = (char *)(q->sampler ? q->sampler : "");
    mm_generate_args a = {.prompt = q->prompt, .images = images, .image_lens = &image_len,
                          .n_images = image_bytes ? 1 : 0, .sampling = &sp, .image = &ip,
                          .generate_image = q->generate_image};
    uint8_t *buf = NULL;
    if (mm_generate_request_pack(&a, &buf, len) != MM_OK) buf = NULL;
    free(image_bytes);
    return buf;
}

static void take_image(pool_result *r, const Metamorph__V1__GeneratedImage *im) {
    int k = r->n_images++;
    if (k >= MAX_IMAGES) return;
    r->png_len[k] = im->png.len;
    r->png[k] = malloc(im->png.len ? im->png.len : 1);
    if (r->png[k]) memcpy(r->png[k], im->png.data, im->png.len);
    r->n_visual[k] = im->n_visual_tokens;
    r->visual[k] = malloc((im->n_visual_tokens ? im->n_visual_tokens : 1) * sizeof(float));
    if (r->visual[k]) memcpy(r->visual[k], im->visual_tokens, im->n_visual_tokens * sizeof(float));
    r->n_tokens[k] = im->n_tokens, r->dim[k] = im->dim;
}

static void take_text(pool_result *r, const int32_t *ids, size_t n, const char *text) {
    for (size_t i = 0; i < n && r->n_ids < 4096; i++) r->ids[r->n_ids++] = ids[i];
    size_t have = strlen(r->text);
    snprintf(r->text + have, sizeof r->text - have, "%s", text);
}

static int on_unary(void *user, const uint8_t *d, size_t n) {
    pool_result *r = user;
    Metamorph__V1__GenerateResponse *resp = metamorph__v1__generate_response__unpack(NULL, n, d);
    if (!resp) return 1;
    take_text(r, resp->token_ids, resp->n_token_ids, resp->text);
    for (size_t i = 0; i < resp->n_images; i++) take_image(r, resp->images[i]);
    metamorph__v1__generate_response__free_unpacked(resp, NULL);
    return 0;
}

static int on_stream(void *user, const uint8_t *d, size_t n) {
    pool_result *r = user;
    Metamorph__V1__GenerateEvent *ev = metamorph__v1__generate_event__unpack(NULL, n, d);
    if (!ev) return 1;
    if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_DELTA)
        take_text(r, ev->delta->token_ids, ev->delta->n_token_ids, ev->delta->text);
    else if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_STARTED)
        r->n_started++;
    else if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_READY)
        take_image(r, ev->image_ready);
    metamorph__v1__generate_event__free_unpacked(ev, NULL);
    return 0;
}

/* Generate (stream 0) or GenerateStream (1) with a deadline of timeout_s. */
static void call(mm_service *s, const pool_request *q, int stream, double timeout_s, pool_result *out) {
    memset(out, 0, sizeof *out);
    size_t len;
    uint8_t *buf = pack_request(q, &len);
    if (!buf) {
        out->code = -1;
        snprintf(out->msg, sizeof out->msg, "cannot pack the request (image %s)", q->image ? q->image : "none");
        return;
    }
    const char *method = stream ? "/metamorph.v1.MetaMorph/GenerateStream" : "/metamorph.v1.MetaMorph/Generate";
    out->code = mm_client_call(s->cl, method, buf, len, timeout_s, stream ? on_stream : on_unary, out, out->msg,
                               sizeof out->msg);
    free(buf);
}

static void result_free(pool_result *r) {
    for (int k = 0; k < MAX_IMAGES; k++) free(r->png[k]), free(r->visual[k]);
}

static int n_text_ids(const pool_result *r) {
    int n = 0;
    for (int i = 0; i < r->n_ids; i++) n += r->ids[i] >= 0;
    return n;
}

/* A call on a thread of its own. */
typedef struct {
    mm_service *s;
    const pool_request *q;
    int stream;
    double timeout_s;
    pthread_t thread;
    int running;            /* the thread was started (join it) */
    pool_result r;
} call_arg;

static void *call_main(void *p) {
    call_arg *a = p;
    call(a->s, a->q, a->stream, a->timeout_s, &a->r);
    return NULL;
}

static void call_start(call_arg *a) {
    a->running = pthread_create(&a->thread, NULL, call_main, a) == 0;
    EXPECT(a->running, "cannot start a client thread");
    if (!a->running) a->r.code = -1;
}

static void call_join(call_arg *a) {
    if (a->running) pthread_join(a->thread, NULL);
    a->running = 0;
}

/* ---------------------------------------------------------------- checks */

/* Runs argv with stdout and stderr into log (mm-decode prints a line per step): 0 when it
 * exited with 0. */
static int run_logged(char *const argv[], const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stdout) || !freopen(log, "a", stderr)) _exit(127);
        execv(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Is image k of r, byte for byte, the PNG mm-decode writes for r's visual tokens with q's
 * decoder parameters? The tokens go to a safetensors file as mmctl --out writes them. */
static int equals_mm_decode(const mm_service *s, const char *mm_decode, const pool_request *q, const pool_result *r,
                            int k) {
    static int n_refs; /* file names; checks run on the main thread only */
    int ref = n_refs++;
    char tokens[512], png[512], log[512], model[1024], steps[16], guidance[32], seed[32];
    snprintf(tokens, sizeof tokens, "%s/ref-%d.safetensors", s->dir, ref);
    snprintf(png, sizeof png, "%s/ref-%d.png", s->dir, ref);
    snprintf(log, sizeof log, "%s/ref-%d.log", s->dir, ref);
    snprintf(model, sizeof model, "%s/tiny", getenv("MM_ASSETS_DIR"));
    mm_st_write_tensor t = {"image.0", MM_DTYPE_F32, 2, {r->n_tokens[k], r->dim[k]}, r->visual[k]};
    if (mm_safetensors_write(tokens, &t, 1) != MM_OK) {
        fprintf(stderr, "%s: %s\n", tokens, mm_error_last());
        return 0;
    }
    snprintf(steps, sizeof steps, "%d", q->steps);
    snprintf(guidance, sizeof guidance, "%.9g", (double)q->guidance);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)q->seed);
    char *argv[20] = {(char *)mm_decode, "--model", model, "--tokens", tokens, "--steps", steps, "--seed", seed,
                      "--threads", "1", "--out", png};
    int n = 13;
    if (q->guidance != 0.0f) argv[n++] = "--guidance", argv[n++] = guidance;
    if (q->sampler) argv[n++] = "--sampler", argv[n++] = (char *)q->sampler;
    if (run_logged(argv, log) != 0) {
        fprintf(stderr, "mm-decode failed: see %s\n", log);
        return 0;
    }
    size_t len = 0;
    uint8_t *want = (uint8_t *)mm_test_read_file(png, &len);
    int same = want && len == r->png_len[k] && !memcmp(want, r->png[k], len);
    if (!same)
        fprintf(stderr, "the service's PNG (%zu bytes) differs from mm-decode's %s (%zu bytes)\n", r->png_len[k], png,
                len);
    free(want);
    return same;
}

/* r answered q with exactly one image (and, streamed, one IMAGE_STARTED), whose PNG is
 * mm-decode's for its visual tokens. */
static void expect_decoded(const mm_service *s, const char *mm_decode, const pool_request *q, const pool_result *r,
                           int stream, const char *what) {
    EXPECT(r->code == 0, "%s: %s \"%s\"", what, mm_grpc_code_name(r->code), r->msg);
    if (r->code != 0) return;
    EXPECT(r->n_images == 1 && (!stream || r->n_started == 1), "%s: %d images (%d started), want 1", what, r->n_images,
           r->n_started);
    if (r->n_images < 1) return;
    EXPECT(r->n_tokens[0] > 0 && r->dim[0] > 0 && r->n_visual[0] == (size_t)r->n_tokens[0] * (size_t)r->dim[0] &&
               r->visual[0],
           "%s: visual tokens [%d, %d] in %zu floats", what, r->n_tokens[0], r->dim[0], r->n_visual[0]);
    EXPECT(r->png_len[0] > 0 && r->png[0], "%s: no PNG", what);
    if (r->png_len[0] && r->n_visual[0])
        EXPECT(equals_mm_decode(s, mm_decode, q, r, 0), "%s: the PNG is not mm-decode's for its visual tokens", what);
}

static int same_answer(const pool_result *a, const pool_result *b) {
    return a->n_ids == b->n_ids && !memcmp(a->ids, b->ids, sizeof(int32_t) * (size_t)a->n_ids) &&
           !strcmp(a->text, b->text);
}

/* ---------------------------------------------------------------- service */

static int start(mm_service *s, const char *coord, const char *stage, int n_stages, const char *extra_json,
                 int n_encoders, int n_decoders) {
    int ok = svc_start_pools(s, coord, stage, n_stages, extra_json, n_encoders, n_decoders) == 0;
    EXPECT(ok, "the service starts (see %s)", s->dir);
    if (!ok) svc_stop(s);
    return ok;
}

static void stop(mm_service *s) {
    EXPECT(svc_health(s) == 1, "still SERVING at the end");
    int st = svc_stop(s);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "clean stop (status %d)", st);
}

/* Starts one more worker; log gets its log's name (svc_worker_start calls the k-th
 * worker it starts POOL-test-k, svc_start_pools' encoders first, then its decoders). */
static pid_t start_worker(mm_service *s, const char *pool, char log[64]) {
    snprintf(log, 64, "%s-test-%d.log", pool, s->n_worker_starts);
    pid_t pid = svc_worker_start(s, pool);
    EXPECT(pid > 0, "start a %s worker", pool);
    return pid;
}

/* ---------------------------------------------------------------- png_identical */

static void test_png_identical(const char *coord, const char *stage, const char *mm_decode) {
    mm_service s;
    if (!start(&s, coord, stage, 2, "", 1, 1)) return;
    static const struct {
        const char *sampler;
        float guidance;
        uint64_t seed;
    } HOW[] = {{"ddim", 3.0f, 7}, {"dpmpp2m", 6.5f, 11}};
    for (size_t h = 0; h < sizeof HOW / sizeof HOW[0]; h++) {
        pool_request q = {NULL, "Draw a cat on a red sofa.", 1, 70, FAST_STEPS, HOW[h].guidance, HOW[h].sampler,
                          HOW[h].seed};
        static pool_result unary, streamed;
        char what[64];
        call(&s, &q, 0, CALL_TIMEOUT_S, &unary);
        snprintf(what, sizeof what, "%s, Generate", q.sampler);
        expect_decoded(&s, mm_decode, &q, &unary, 0, what);
        call(&s, &q, 1, CALL_TIMEOUT_S, &streamed);
        snprintf(what, sizeof what, "%s, GenerateStream", q.sampler);
        expect_decoded(&s, mm_decode, &q, &streamed, 1, what);
        EXPECT(same_answer(&unary, &streamed), "%s: the stream's ids and text differ from Generate's", q.sampler);
        result_free(&unary), result_free(&streamed);
    }
    /* image in, image out: the picture goes through the encoder pool, the drawing through
     * the decoder pool, and text follows the drawing */
    pool_request mixed = {example_png(), "What is in this picture? Draw it again.", 1, 96, FAST_STEPS, 4.0f, "pndm", 3};
    static pool_result unary, streamed;
    call(&s, &mixed, 0, CALL_TIMEOUT_S, &unary);
    expect_decoded(&s, mm_decode, &mixed, &unary, 0, "image in, image out, Generate");
    call(&s, &mixed, 1, CALL_TIMEOUT_S, &streamed);
    expect_decoded(&s, mm_decode, &mixed, &streamed, 1, "image in, image out, GenerateStream");
    EXPECT(n_text_ids(&unary) > 0 && unary.text[0], "image in, image out: no text after the image (%d ids)",
           unary.n_ids);
    EXPECT(same_answer(&unary, &streamed), "image in, image out: the stream's ids and text differ from Generate's");
    int encoded = svc_log_count(&s, "encode-test-0.log", JOB_DONE);
    EXPECT(encoded >= 1, "the encoder worker's log shows no finished job (%d)", encoded);
    result_free(&unary), result_free(&streamed);
    stop(&s);
}

/* ---------------------------------------------------------------- workers killed */

/* Lines of the coordinator's log that say the broker let worker `name` go. */
static int coordinator_dropped(const mm_service *s, const char *pool, const char *name) {
    char silent[160], refused[160];
    snprintf(silent, sizeof silent, "pool %s: worker %s silent for", pool, name);
    snprintf(refused, sizeof refused, "pool %s: worker %s cannot take", pool, name);
    return svc_log_count(s, "service.log", silent) + svc_log_count(s, "service.log", refused);
}

/* After a worker of pool (dead: its name) was killed mid-job: the worker started after it
 * (second_log) ran the job once, the coordinator counted one re-dispatch (series) and
 * logged dropping the dead one. */
static void expect_redispatched(mm_service *s, const char *pool, const char *series, const char *dead,
                                const char *second_log) {
    EXPECT(svc_log_count(s, second_log, JOB_DONE) == 1, "the second %s worker ran %d jobs, want 1", pool,
           svc_log_count(s, second_log, JOB_DONE));
    /* the coordinator publishes pool figures every 50 ms: wait for this request's */
    EXPECT(svc_wait_metric(s, series, 1, 5.0) == 0, "%g re-dispatches, want 1", svc_metric(s, series));
    EXPECT(coordinator_dropped(s, pool, dead) >= 1, "service.log does not say %s was dropped", dead);
}

/* ---------------------------------------------------------------- client gone mid-decode */

/* A GenerateStream client that hangs up once the decoder whose log is `log` has started
 * a job after the call began. */
typedef struct {
    pool_result r;
    const mm_service *s;
    const char *log;
    int started_before;     /* JOB_STARTED lines in log before the call */
    int hung_up;            /* it saw the decode start, then hung up */
} hang_up_arg;

static int hang_up_once_decoding(void *user, const uint8_t *d, size_t n) {
    hang_up_arg *h = user;
    if (on_stream(&h->r, d, n) != 0) return 1;
    if (h->r.n_started == 0) return 0;
    for (double t0 = mm_now_s(); mm_now_s() - t0 < CALL_TIMEOUT_S; usleep(10000))
        if (svc_log_count(h->s, h->log, JOB_STARTED) > h->started_before) {
            h->hung_up = 1;
            return 1;
        }
    return 1;
}

/* The step at which the decoder whose log is `log` stopped its last cancelled job, and of
 * how many (0 when its log says no such thing). */
static int stopped_at_step(const mm_service *s, const char *log, int *of) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", s->dir, log);
    char *text = mm_test_read_file(path, NULL), *z = text;
    int k = 0;
    if (z) {
        for (const char *at = strstr(z, JOB_STOPPED); at; at = strstr(at + 1, JOB_STOPPED)) {
            const char *step = strstr(at, "cancelled after step ");
            if (!step || sscanf(step, "cancelled after step %d of %d", &k, of) != 2) k = 0;
        }
    }
    free(z ? z : text);
    return k;
}

/* The client goes away while its image decodes on the only decoder (log): the coordinator
 * cancels the job, the decoder stops between UNet steps and answers at once, so its slot
 * is free and the next request is served by it. */
static void test_client_gone_mid_decode(mm_service *s, const char *mm_decode, const char *log) {
    pool_request q = {NULL, "Draw a windmill in a field.", 1, 70, CANCEL_STEPS, 5.0f, "ddim", 9};
    static hang_up_arg h;
    h = (hang_up_arg){.s = s, .log = log, .started_before = svc_log_count(s, log, JOB_STARTED)};
    const int done_before = svc_log_count(s, log, JOB_DONE);
    char dropped[160]; /* what service.log would say had the "cancelled" answer been taken for a protocol error */
    snprintf(dropped, sizeof dropped, "pool decode: worker %.*s dropped", (int)(strlen(log) - 4), log);
    size_t len;
    uint8_t *buf = pack_request(&q, &len);
    EXPECT(buf != NULL, "pack the request");
    if (!buf) return;
    int code = mm_client_call(s->cl, "/metamorph.v1.MetaMorph/GenerateStream", buf, len, CALL_TIMEOUT_S,
                              hang_up_once_decoding, &h, h.r.msg, sizeof h.r.msg);
    free(buf);
    EXPECT(h.hung_up && h.r.n_images == 0, "the client hung up while its image decoded (code %s, hung up %d, %d images)",
           mm_grpc_code_name(code), h.hung_up, h.r.n_images);
    int k = 0, n = 0;
    for (double t0 = mm_now_s(); mm_now_s() - t0 < CALL_TIMEOUT_S && !(k = stopped_at_step(s, log, &n)); usleep(20000)) {}
    EXPECT(k >= 1 && n == CANCEL_STEPS && k < n, "%s: the decoder stopped at step %d of %d (want < %d)", log, k, n,
           CANCEL_STEPS);
    EXPECT(svc_wait_metric(s, IN_FLIGHT("decode"), 0, CALL_TIMEOUT_S) == 0, "the decoder's slot frees (%g in flight)",
           svc_metric(s, IN_FLIGHT("decode")));
    EXPECT(svc_log_count(s, log, JOB_DONE) == done_before, "the cancelled decode ran to its end");
    EXPECT(svc_log_count(s, "service.log", dropped) == 0 && svc_metric(s, WORKERS("decode")) == 1,
           "the decoder's \"cancelled\" answer got it dropped (\"%s\")", dropped);
    result_free(&h.r);
    pool_request next = {NULL, "Draw a lighthouse at night.", 1, 70, FAST_STEPS, 5.0f, "ddim", 43};
    static pool_result r;
    call(s, &next, 0, CALL_TIMEOUT_S, &r);
    expect_decoded(s, mm_decode, &next, &r, 0, "the request after the hang-up");
    result_free(&r);
}

static void test_decoder_killed(const char *coord, const char *stage, const char *mm_decode) {
    mm_service s;
    if (!start(&s, coord, stage, 1, "", 1, 1)) return;
    const pid_t first = s.workers[1]; /* encode-test-0, decode-test-1 */
    EXPECT(svc_wait_metric(&s, WORKERS("decode"), 1, JOIN_WAIT_S) == 0, "the decoder joins");
    pool_request q = {NULL, "Draw a lighthouse at night.", 1, 70, SLOW_STEPS, 5.0f, "ddim", 42};
    static call_arg a;
    a = (call_arg){.s = &s, .q = &q, .stream = 1, .timeout_s = CALL_TIMEOUT_S};
    call_start(&a);
    /* the job is on the only decoder (its decode lasts seconds): a second one starts, the
     * first dies */
    EXPECT(svc_wait_metric(&s, IN_FLIGHT("decode"), 1, CALL_TIMEOUT_S) == 0, "the decode job reaches the decoder");
    char second_log[64];
    start_worker(&s, "decode", second_log);
    svc_worker_kill(&s, first, SIGKILL);
    call_join(&a);
    expect_decoded(&s, mm_decode, &q, &a.r, 1, "decoder killed mid-job");
    EXPECT(svc_log_count(&s, "decode-test-1.log", JOB_DONE) == 0, "the killed decoder finished its job first");
    expect_redispatched(&s, "decode", REDISPATCHES("decode"), "decode-test-1", second_log);
    result_free(&a.r);
    test_client_gone_mid_decode(&s, mm_decode, second_log);
    stop(&s);
}

static void test_encoder_killed(const char *coord, const char *stage) {
    mm_service s;
    /* no embedding cache: the same image is encoded every time. A silent worker counts as
     * dead only after 10 s, so the stopped encoder keeps its job until it is killed. */
    if (!start(&s, coord, stage, 1, "\"embed_cache_mb\": 0, \"pool_liveness\": 100", 1, 1)) return;
    const pid_t first = s.workers[0]; /* encode-test-0 */
    pool_request q = {example_png(), "What is in this picture?", 0, 24, 0, 0.0f, NULL, 0};
    static pool_result before;
    call(&s, &q, 0, CALL_TIMEOUT_S, &before);
    EXPECT(before.code == 0 && n_text_ids(&before) > 0, "before: %s \"%s\"", mm_grpc_code_name(before.code),
           before.msg);
    EXPECT(svc_log_count(&s, "encode-test-0.log", JOB_DONE) == 1, "the encoder ran the first request's job");
    svc_worker_kill(&s, first, SIGSTOP);
    static call_arg a;
    a = (call_arg){.s = &s, .q = &q, .stream = 1, .timeout_s = CALL_TIMEOUT_S};
    call_start(&a);
    EXPECT(svc_wait_metric(&s, IN_FLIGHT("encode"), 1, CALL_TIMEOUT_S) == 0,
           "the encode job reaches the stopped encoder");
    char second_log[64];
    start_worker(&s, "encode", second_log);
    svc_worker_kill(&s, first, SIGKILL);
    call_join(&a);
    EXPECT(a.r.code == 0, "encoder killed mid-job: %s \"%s\"", mm_grpc_code_name(a.r.code), a.r.msg);
    EXPECT(same_answer(&a.r, &before), "encoder killed mid-job: the answer differs from the one before (%d vs %d ids)",
           a.r.n_ids, before.n_ids);
    expect_redispatched(&s, "encode", REDISPATCHES("encode"), "encode-test-0", second_log);
    result_free(&before), result_free(&a.r);
    stop(&s);
}

/* ---------------------------------------------------------------- empty pools */

/* Writes example.png followed by zeros up to len bytes to path: 0 on success. */
static int write_padded_png(const char *path, size_t len) {
    size_t n = 0;
    char *png = mm_test_read_file(example_png(), &n);
    FILE *f = png && n <= len ? fopen(path, "wb") : NULL;
    int ok = f && fwrite(png, 1, n, f) == n;
    for (size_t i = n; ok && i < len; i++) ok = fputc(0, f) != EOF;
    if (f && fclose(f) != 0) ok = 0;
    free(png);
    return ok ? 0 : -1;
}

static void test_empty_pools(const char *coord, const char *stage, const char *mm_decode) {
    mm_service s;
    if (!start(&s, coord, stage, 1, "\"pool_max_message_mb\": 1", 0, 0)) return;
    const double deadline_s = 5; /* room for the generation's 64 visual tokens before its decode waits */
    pool_request draw = {NULL, "Draw a boat on a lake.", 1, 70, FAST_STEPS, 4.0f, "ddim", 5};
    pool_request look = {example_png(), "What is in this picture?", 0, 16, 0, 0.0f, NULL, 0};
    pool_request talk = {NULL, "Tell me about pipelines.", 0, 16, 0, 0.0f, NULL, 0};
    static call_arg stuck[2];
    stuck[0] = (call_arg){.s = &s, .q = &draw, .stream = 0, .timeout_s = deadline_s};
    stuck[1] = (call_arg){.s = &s, .q = &look, .stream = 1, .timeout_s = deadline_s};
    call_start(&stuck[0]);
    call_start(&stuck[1]);
    static pool_result text;
    call(&s, &talk, 0, CALL_TIMEOUT_S, &text);
    EXPECT(text.code == 0 && n_text_ids(&text) > 0, "text with both pools empty: %s \"%s\"",
           mm_grpc_code_name(text.code), text.msg);
    call_join(&stuck[0]);
    call_join(&stuck[1]);
    EXPECT(stuck[0].r.code == 14 && strstr(stuck[0].r.msg, "no decoder worker"),
           "generation with no decoder: %s \"%s\", want UNAVAILABLE \"no decoder worker ...\"",
           mm_grpc_code_name(stuck[0].r.code), stuck[0].r.msg);
    EXPECT(stuck[1].r.code == 14 && strstr(stuck[1].r.msg, "no encoder worker"),
           "image with no encoder: %s \"%s\", want UNAVAILABLE \"no encoder worker ...\"",
           mm_grpc_code_name(stuck[1].r.code), stuck[1].r.msg);
    EXPECT(svc_health(&s) == 1, "SERVING with empty pools");
    /* an image over pool_max_message_mb: no retry can help, so INVALID_ARGUMENT naming it */
    char big[512];
    snprintf(big, sizeof big, "%s/big.png", s.dir);
    EXPECT(write_padded_png(big, (size_t)3 << 19) == 0, "write %s", big);
    pool_request huge = {big, "What is in this picture?", 0, 16, 0, 0.0f, NULL, 0};
    static pool_result refused;
    call(&s, &huge, 0, CALL_TIMEOUT_S, &refused);
    EXPECT(refused.code == 3 && strstr(refused.msg, "messages[0].parts[0].image: ") &&
               strstr(refused.msg, "pool_max_message_mb") && !strstr(refused.msg, ".c:"),
           "an image over pool_max_message_mb: %s \"%s\", want INVALID_ARGUMENT naming the part",
           mm_grpc_code_name(refused.code), refused.msg);
    result_free(&refused);
    /* workers join: the same requests are served */
    char log[64];
    start_worker(&s, "decode", log);
    start_worker(&s, "encode", log);
    EXPECT(svc_wait_metric(&s, WORKERS("decode"), 1, JOIN_WAIT_S) == 0 &&
               svc_wait_metric(&s, WORKERS("encode"), 1, JOIN_WAIT_S) == 0,
           "the workers join");
    static pool_result drawn, seen;
    call(&s, &draw, 1, CALL_TIMEOUT_S, &drawn);
    expect_decoded(&s, mm_decode, &draw, &drawn, 1, "generation once a decoder joined");
    call(&s, &look, 0, CALL_TIMEOUT_S, &seen);
    EXPECT(seen.code == 0 && n_text_ids(&seen) > 0, "image once an encoder joined: %s \"%s\"",
           mm_grpc_code_name(seen.code), seen.msg);
    for (int i = 0; i < 2; i++) result_free(&stuck[i].r);
    result_free(&text), result_free(&drawn), result_free(&seen);
    stop(&s);
}

/* ---------------------------------------------------------------- bad workers */

typedef Metamorph__Internal__PoolHeader pool_header;

typedef enum { SENDS_GARBAGE, ANSWERS_WRONG_JOB, ANSWERS_NOT_PNG } misbehaviour;

/* A decoder that joins properly, takes a real job and then breaks the protocol. */
typedef struct {
    const char *name;       /* routing id and READY name */
    misbehaviour how;
    const char *logged;     /* what service.log must say once about it */
    void *sock;             /* DEALER */
    int joined, has_job;    /* heard the coordinator; got a JOB */
    uint64_t job_id;
    double last_beat;
} fake_decoder;

static int fake_send(fake_decoder *f, const pool_header *h, const void *payload, size_t len) {
    uint8_t buf[512];
    size_t n = metamorph__internal__pool_header__pack(h, buf);
    if (zmq_send(f->sock, buf, n, payload ? ZMQ_SNDMORE : 0) < 0) return -1;
    return payload && zmq_send(f->sock, payload, len, 0) < 0 ? -1 : 0;
}

static void fake_header(const fake_decoder *f, Metamorph__Internal__PoolMsgType type, pool_header *h) {
    metamorph__internal__pool_header__init(h);
    h->type = type;
    h->pool = (char *)"decode";
    h->worker = (char *)f->name;
}

static int fake_connect(fake_decoder *f, void *zctx, const char *endpoint) {
    int zero = 0;
    f->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (!f->sock || zmq_setsockopt(f->sock, ZMQ_ROUTING_ID, f->name, strlen(f->name)) ||
        zmq_setsockopt(f->sock, ZMQ_LINGER, &zero, sizeof zero) || zmq_connect(f->sock, endpoint))
        return -1;
    pool_header h;
    fake_header(f, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_READY, &h);
    h.capacity = 1, h.heartbeat_ms = 100;
    return fake_send(f, &h, NULL, 0);
}

/* Reads what the coordinator sent each fake and heartbeats them until every one has
 * joined (want_jobs 0) or holds a job (1); 0 when that happened within timeout_s. */
static int fakes_pump(fake_decoder *fakes, int n, int want_jobs, double timeout_s) {
    for (double t0 = mm_now_s(); mm_now_s() - t0 < timeout_s;) {
        int done = 0;
        for (int i = 0; i < n; i++) done += want_jobs ? fakes[i].has_job : fakes[i].joined;
        if (done == n) return 0;
        zmq_pollitem_t items[8];
        if (n > 8) return -1;
        for (int i = 0; i < n; i++) items[i] = (zmq_pollitem_t){fakes[i].sock, 0, ZMQ_POLLIN, 0};
        zmq_poll(items, n, 20);
        for (int i = 0; i < n; i++) {
            fake_decoder *f = &fakes[i];
            zmq_msg_t frame;
            zmq_msg_init(&frame);
            while (zmq_msg_recv(&frame, f->sock, ZMQ_DONTWAIT) >= 0) {
                pool_header *h =
                    metamorph__internal__pool_header__unpack(NULL, zmq_msg_size(&frame), zmq_msg_data(&frame));
                while (zmq_msg_more(&frame)) zmq_msg_recv(&frame, f->sock, 0); /* the payload: not needed */
                if (h) {
                    f->joined = 1;
                    if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB && !f->has_job)
                        f->has_job = 1, f->job_id = h->job_id;
                    metamorph__internal__pool_header__free_unpacked(h, NULL);
                }
            }
            zmq_msg_close(&frame);
            if (mm_now_s() - f->last_beat >= 0.05) {
                pool_header hb;
                fake_header(f, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT, &hb);
                if (fake_send(f, &hb, NULL, 0) != 0) return -1;
                f->last_beat = mm_now_s();
            }
        }
    }
    return -1;
}

static int fake_misbehave(fake_decoder *f) {
    pool_header h;
    fake_header(f, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_RESULT, &h);
    h.job_id = f->job_id, h.width = 64, h.height = 64;
    static const char NOT_PNG[] = "these bytes are not a PNG";
    switch (f->how) {
    case SENDS_GARBAGE: {
        static const uint8_t GARBAGE[] = {0x0f, 0xff, 0x00, 0x13, 0x37}; /* field 1 with wire type 7: no protobuf */
        return zmq_send(f->sock, GARBAGE, sizeof GARBAGE, 0) < 0 ? -1 : 0;
    }
    case ANSWERS_WRONG_JOB: h.job_id = f->job_id + 1000000; return fake_send(f, &h, NOT_PNG, sizeof NOT_PNG);
    case ANSWERS_NOT_PNG: return fake_send(f, &h, NOT_PNG, sizeof NOT_PNG);
    }
    return -1;
}

static void test_bad_workers(const char *coord, const char *stage, const char *mm_decode) {
    mm_service s;
    /* liveness 20: the fakes are pumped by this (busy) process; a late heartbeat must not
     * get one dropped for silence instead of for what it sends */
    if (!start(&s, coord, stage, 1, "\"pool_liveness\": 20", 0, 0)) return;
    fake_decoder fakes[] = {
        {.name = "fake-garbage", .how = SENDS_GARBAGE,
         .logged = "pool decode: worker fake-garbage dropped: header frame does not parse"},
        {.name = "fake-wrong-job", .how = ANSWERS_WRONG_JOB,
         .logged = "pool decode: worker fake-wrong-job dropped: result for job"},
        {.name = "fake-not-png", .how = ANSWERS_NOT_PNG,
         .logged = "pool decode: worker fake-not-png dropped: result of job"},
    };
    enum { N_FAKES = sizeof fakes / sizeof fakes[0] };
    void *zctx = zmq_ctx_new();
    int connected = zctx != NULL;
    for (int i = 0; i < N_FAKES && connected; i++) connected = fake_connect(&fakes[i], zctx, s.decode_ep) == 0;
    EXPECT(connected, "fake decoders connect: %s", zmq_strerror(zmq_errno()));
    EXPECT(connected && fakes_pump(fakes, N_FAKES, 0, JOIN_WAIT_S) == 0, "the fake decoders join");
    /* one request per fake: each takes one job (capacity 1), breaks the protocol, and its
     * job must go to the real decoder started afterwards */
    static pool_request q[N_FAKES];
    static call_arg a[N_FAKES];
    static const char *PROMPTS[N_FAKES] = {"Draw a red apple.", "Draw a mountain.", "Draw a small house."};
    for (int i = 0; i < N_FAKES; i++) {
        q[i] = (pool_request){NULL, PROMPTS[i], 1, 70, FAST_STEPS, 4.0f, "dpmpp2m", (uint64_t)(20 + i)};
        a[i] = (call_arg){.s = &s, .q = &q[i], .stream = i % 2, .timeout_s = CALL_TIMEOUT_S};
        call_start(&a[i]);
    }
    EXPECT(connected && fakes_pump(fakes, N_FAKES, 1, CALL_TIMEOUT_S) == 0, "each fake decoder gets a job");
    for (int i = 0; i < N_FAKES && connected; i++)
        EXPECT(fake_misbehave(&fakes[i]) == 0, "%s cannot send", fakes[i].name);
    char log[64];
    start_worker(&s, "decode", log);
    for (int i = 0; i < N_FAKES; i++) call_join(&a[i]);
    for (int i = 0; i < N_FAKES; i++) {
        char what[96];
        snprintf(what, sizeof what, "request %d (its job first with %s)", i, fakes[i].name);
        expect_decoded(&s, mm_decode, &q[i], &a[i].r, i % 2, what);
        result_free(&a[i].r);
    }
    EXPECT(svc_health(&s) == 1, "SERVING after the bad workers");
    for (int i = 0; i < N_FAKES; i++)
        EXPECT(svc_log_count(&s, "service.log", fakes[i].logged) == 1, "service.log: %d lines \"%s\", want 1",
               svc_log_count(&s, "service.log", fakes[i].logged), fakes[i].logged);
    EXPECT(svc_log_count(&s, "service.log", "that are not a PNG") == 1,
           "service.log does not say why fake-not-png was dropped");
    EXPECT(svc_metric(&s, WORKERS("decode")) == 1, "%g decoders left, want the real one",
           svc_metric(&s, WORKERS("decode")));
    for (int i = 0; i < N_FAKES; i++)
        if (fakes[i].sock) zmq_close(fakes[i].sock);
    if (zctx) zmq_ctx_term(zctx);
    stop(&s);
}

/* ---------------------------------------------------------------- 16 at once */

/* Collects the job ids of a decoder's "decode job N done in" lines into ids; returns how many. */
static int done_job_ids(const mm_service *s, const char *log, uint64_t *ids, int cap) {
    char path[600], line[4096];
    snprintf(path, sizeof path, "%s/%s", s->dir, log);
    FILE *f = fopen(path, "r");
    int n = 0;
    unsigned long long id;
    while (f && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "decode job ");
        if (at && strstr(at, JOB_DONE) && sscanf(at, "decode job %llu", &id) == 1 && n < cap) ids[n++] = id;
    }
    if (f) fclose(f);
    return n;
}

#define N_CONCURRENT 16

static void test_concurrent16(const char *coord, const char *stage, const char *mm_decode) {
    mm_service s;
    if (!start(&s, coord, stage, 1, "", 0, 2)) return; /* decode-test-0, decode-test-1 */
    EXPECT(svc_wait_metric(&s, WORKERS("decode"), 2, JOIN_WAIT_S) == 0, "both decoders join");
    static const char *PROMPTS[] = {"Draw a cat.", "Draw a tree in winter.", "Draw the sea.", "Draw a red car."};
    static const char *SAMPLERS[] = {"pndm", "ddim", "dpmpp2m"};
    static pool_request q[N_CONCURRENT];
    static call_arg a[N_CONCURRENT];
    for (int i = 0; i < N_CONCURRENT; i++) {
        q[i] = (pool_request){NULL, PROMPTS[i % 4], 1, 70, 10, 5.0f, SAMPLERS[i % 3], (uint64_t)(100 + i)};
        a[i] = (call_arg){.s = &s, .q = &q[i], .stream = i % 2, .timeout_s = CALL_TIMEOUT_S};
        call_start(&a[i]);
    }
    for (int i = 0; i < N_CONCURRENT; i++) call_join(&a[i]);
    for (int i = 0; i < N_CONCURRENT; i++) {
        char what[64];
        snprintf(what, sizeof what, "concurrent request %d", i);
        expect_decoded(&s, mm_decode, &q[i], &a[i].r, i % 2, what);
        result_free(&a[i].r);
    }
    /* every decode ran exactly once: 16 distinct job ids over both workers' logs */
    uint64_t ids[2 * N_CONCURRENT];
    int n = done_job_ids(&s, "decode-test-0.log", ids, 2 * N_CONCURRENT);
    n += done_job_ids(&s, "decode-test-1.log", ids + n, 2 * N_CONCURRENT - n);
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= ids[j] == ids[i];
        distinct += !seen;
    }
    EXPECT(n == N_CONCURRENT && distinct == N_CONCURRENT, "the decoders ran %d jobs (%d distinct), want %d", n,
           distinct, N_CONCURRENT);
    EXPECT(svc_metric(&s, REDISPATCHES("decode")) == 0, "%g re-dispatches, want 0",
           svc_metric(&s, REDISPATCHES("decode")));
    stop(&s);
}

/* ---------------------------------------------------------------- CURVE pools */

/* A fake decoder that connects with CURVE: key file (NULL: plain text) and the server's
 * public key; READY sent. */
static int fake_connect_curve(fake_decoder *f, void *zctx, const char *endpoint, const char *key_file,
                              const char *server_pub) {
    int zero = 0;
    char pub[MM_Z85_KEY_LEN + 1], sec[MM_Z85_KEY_LEN + 1];
    f->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (!f->sock || zmq_setsockopt(f->sock, ZMQ_ROUTING_ID, f->name, strlen(f->name)) ||
        zmq_setsockopt(f->sock, ZMQ_LINGER, &zero, sizeof zero))
        return -1;
    if (key_file && (mm_curve_key_read(key_file, pub, sec) != MM_OK ||
                     zmq_setsockopt(f->sock, ZMQ_CURVE_SERVERKEY, server_pub, MM_Z85_KEY_LEN) ||
                     zmq_setsockopt(f->sock, ZMQ_CURVE_PUBLICKEY, pub, MM_Z85_KEY_LEN) ||
                     zmq_setsockopt(f->sock, ZMQ_CURVE_SECRETKEY, sec, MM_Z85_KEY_LEN)))
        return -1;
    if (zmq_connect(f->sock, endpoint)) return -1;
    pool_header h;
    fake_header(f, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_READY, &h);
    h.capacity = 1, h.heartbeat_ms = 100;
    return fake_send(f, &h, NULL, 0);
}

/* Messages a fake received within timeout_s (it sends nothing: a DEALER whose handshake
 * failed would block on send). */
static int rogue_heard(fake_decoder *f, double timeout_s) {
    int n = 0;
    for (double t0 = mm_now_s(); mm_now_s() - t0 < timeout_s;) {
        zmq_pollitem_t item = {f->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 50) <= 0) continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        while (zmq_msg_recv(&m, f->sock, ZMQ_DONTWAIT) >= 0) n++;
        zmq_msg_close(&m);
    }
    return n;
}

/* pool_curve_secret_key + pool_authorized_keys: real workers with an authorized key
 * serve images both ways; a fake worker in plain text and one with an unlisted key never
 * hear from the coordinator (no job, no heartbeat), while one with the authorized key
 * does (so the refusals are not an artefact of the fakes). */
static void test_curve(const char *coord, const char *stage, const char *mm_decode) {
    char dir[] = "/tmp/mm-curve-XXXXXX", coord_key[64], worker_key[64], rogue_key[64], coord_pub[80], allowed[64];
    if (!mkdtemp(dir)) {
        EXPECT(0, "mkdtemp");
        return;
    }
    snprintf(coord_key, sizeof coord_key, "%s/coordinator.key", dir);
    snprintf(worker_key, sizeof worker_key, "%s/worker.key", dir);
    snprintf(rogue_key, sizeof rogue_key, "%s/rogue.key", dir);
    snprintf(allowed, sizeof allowed, "%s/authorized", dir);
    char server_pub[MM_Z85_KEY_LEN + 1], worker_pub[MM_Z85_KEY_LEN + 1];
    EXPECT(mm_curve_keygen(coord_key) == MM_OK && mm_curve_keygen(worker_key) == MM_OK &&
           mm_curve_keygen(rogue_key) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_curve_key_read(coord_key, server_pub, NULL) == MM_OK && mm_curve_key_read(worker_key, worker_pub, NULL) == MM_OK,
           "%s", mm_error_last());
    FILE *f = fopen(allowed, "w");
    if (f) fprintf(f, "# the test's workers\nworker %s\n", worker_pub), fclose(f);
    snprintf(coord_pub, sizeof coord_pub, "%s.pub", coord_key);
    setenv("MM_POOL_CURVE_KEY", worker_key, 1); /* the real workers svc_start_pools starts */
    setenv("MM_POOL_SERVER_KEY", coord_pub, 1);
    char extra[512];
    snprintf(extra, sizeof extra, "\"pool_curve_secret_key\": \"%s\", \"pool_authorized_keys\": \"%s\"", coord_key,
             allowed);
    mm_service s;
    if (start(&s, coord, stage, 1, extra, 1, 1)) {
        void *zctx = zmq_ctx_new();
        fake_decoder fakes[3] = {{.name = "rogue-plain"}, {.name = "rogue-unlisted"}, {.name = "fake-authorized"}};
        EXPECT(fake_connect_curve(&fakes[0], zctx, s.decode_ep, NULL, NULL) == 0 &&
               fake_connect_curve(&fakes[1], zctx, s.decode_ep, rogue_key, server_pub) == 0 &&
               fake_connect_curve(&fakes[2], zctx, s.decode_ep, worker_key, server_pub) == 0, "fakes connect");
        EXPECT(fakes_pump(&fakes[2], 1, 0, JOIN_WAIT_S) == 0, "the fake with the authorized key did not join");
        /* the authorized fake takes no job from here: capacity 1, and it never answers, so
         * make it leave before the real requests */
        zmq_close(fakes[2].sock);
        pool_request draw = {NULL, "Draw a cat.", 1, 70, FAST_STEPS, 4.0f, "pndm", 5};
        pool_request look = {example_png(), "What is in this picture?", 0, 8, 0, 0, NULL, 0};
        static pool_result drawn, seen;
        call(&s, &look, 0, CALL_TIMEOUT_S, &seen);
        EXPECT(seen.code == 0 && n_text_ids(&seen) > 0, "image understood through CURVE: %s \"%s\"",
               mm_grpc_code_name(seen.code), seen.msg);
        call(&s, &draw, 0, CALL_TIMEOUT_S, &drawn);
        EXPECT(drawn.code == 0, "generation through CURVE: %s \"%s\"", mm_grpc_code_name(drawn.code), drawn.msg);
        if (drawn.code == 0) expect_decoded(&s, mm_decode, &draw, &drawn, 0, "generation through CURVE");
        for (int i = 0; i < 2; i++) /* whatever may have come to the rogues, read it (they never send again) */
            EXPECT(rogue_heard(&fakes[i], 1.0) == 0, "%s heard from the coordinator", fakes[i].name);
        EXPECT(svc_log_count(&s, "service.log", "refused a worker") >= 1, "the coordinator did not log the refusal");
        zmq_close(fakes[0].sock), zmq_close(fakes[1].sock);
        zmq_ctx_term(zctx);
        result_free(&drawn), result_free(&seen);
        stop(&s);
    }
    unsetenv("MM_POOL_CURVE_KEY"), unsetenv("MM_POOL_SERVER_KEY");
    const char *files[] = {coord_key, worker_key, rogue_key, allowed};
    char path[96];
    for (size_t i = 0; i < 4; i++) unlink(files[i]), snprintf(path, sizeof path, "%s.pub", files[i]), unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    /* the checks read info lines of the workers' and the coordinator's logs (inherited) */
    if (setenv("MM_LOG_LEVEL", "info", 1) != 0) return 2;
    if (argc != 5) argv = (char *[]){argv[0], "", "", "", ""};
    const char *mode = argv[1], *coord = argv[2], *stage = argv[3], *mm_decode = argv[4];
    if (!strcmp(mode, "png_identical")) test_png_identical(coord, stage, mm_decode);
    else if (!strcmp(mode, "decoder_killed")) test_decoder_killed(coord, stage, mm_decode);
    else if (!strcmp(mode, "encoder_killed")) test_encoder_killed(coord, stage);
    else if (!strcmp(mode, "empty_pools")) test_empty_pools(coord, stage, mm_decode);
    else if (!strcmp(mode, "bad_workers")) test_bad_workers(coord, stage, mm_decode);
    else if (!strcmp(mode, "concurrent16")) test_concurrent16(coord, stage, mm_decode);
    else if (!strcmp(mode, "curve")) test_curve(coord, stage, mm_decode);
    else {
        fprintf(stderr, "usage: test_pools png_identical|decoder_killed|encoder_killed|empty_pools|bad_workers|"
                        "concurrent16|curve COORD STAGE MM_DECODE\n");
        return 2;
    }
    return mm_test_finish(mode);
}
