/* See serve_prefix.h. */
#include "serve_prefix.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/serve_images.h"
#include "bench/serve_load.h"
#include "bench/serve_stats.h"
#include "common/http_client.h"

/* ~200 tokens of the tiny model's vocabulary (the report gives the measured count). */
static const char *INSTRUCTION =
    "You are an image captioning assistant for a large photo archive. For the picture below, write one caption of "
    "at most two sentences. Name the main subject first, then where it is, then the light and the colours. Use "
    "plain words a child would know. Do not guess names of people, places, brands or dates. Do not start with the "
    "words picture, image or photo. If the picture is blurred, dark or empty, say only that. If there is text in "
    "the picture, do not copy it. Now the picture:";
static const char *ASSISTANT_TURN =
    "That is a good question. The short answer is that it depends on the weather, the season and the place, and "
    "I would look at each of them in turn before saying more.";

static const char *const WORKLOADS[] = {"captions", "chat", "random"};

int serve_prefix_is_workload(const char *name) {
    for (size_t k = 0; k < sizeof WORKLOADS / sizeof *WORKLOADS; k++)
        if (!strcmp(name, WORKLOADS[k])) return 1;
    return 0;
}

static double metric(const serve_service *svc, const char *series) {
    mm_http_reply r;
    double v = NAN;
    if (mm_http_request(svc->metrics, "GET", "/metrics", 10, &r) == MM_OK && r.status == 200)
        v = mm_prometheus_sample(r.body, series);
    mm_http_reply_free(&r);
    return v;
}

/* Adds the completed requests of r[0..n) to out (TTFTs into ttft[out->requests..]). */
static void account(const serve_req *r, int n, prefix_run *out, double *ttft) {
    for (int i = 0; i < n; i++) {
        if (!serve_req_ok(&r[i])) {
            out->failed++;
            continue;
        }
        ttft[out->requests++] = (r[i].first - r[i].start) * 1e3;
        out->prompt_tokens += r[i].n_in;
        out->req_per_s += 1; /* requests, divided by the wall time at the end */
        out->out_tok_per_s += r[i].n_out;
    }
}

/* chat: user turn t of conversation c, as serve_load words it */
static unsigned chat_seed(const prefix_bench *b, int t) { return b->seed * 16u + (unsigned)t + 1u; }

/* One workload on the running service svc; fills out. 0, or -1. */
static int run_workload(const prefix_bench *b, serve_service *svc, const serve_image *images, prefix_run *out) {
    memset(out, 0, sizeof *out);
    int chat = !strcmp(b->workload, "chat"), total = chat ? b->concurrency * PREFIX_CHAT_TURNS : b->n;
    int per_round = chat ? b->concurrency : b->n, rounds = chat ? PREFIX_CHAT_TURNS : 1;
    serve_req *r = calloc((size_t)per_round, sizeof *r);
    double *ttft = calloc((size_t)total, sizeof *ttft);
    char *(*hist)[2 * PREFIX_CHAT_TURNS] = calloc((size_t)per_round, sizeof *hist); /* [conversation][turn] */
    const char *(*hist_ptr)[2 * PREFIX_CHAT_TURNS] = calloc((size_t)per_round, sizeof *hist_ptr);
    int rc = r && ttft && hist && hist_ptr ? 0 : -1;
    double hits0 = metric(svc, "metamorph_prefix_cache_hits_total"), wall = 0;
    for (int t = 0; t < rounds && rc == 0; t++) {
        memset(r, 0, (size_t)per_round * sizeof *r);
        for (int i = 0; i < per_round; i++) {
            serve_req *q = &r[i];
            q->kind = SERVE_TEXT, q->in_len = b->in_len, q->out_len = b->out_len;
            if (b->range > 0) { /* the same lengths in every run: drawn from the request's index */
                unsigned st = b->seed * 7919u + (unsigned)(t * per_round + i);
                double u = (double)rand_r(&st) / RAND_MAX;
                q->out_len = (int)fmax(1, round(b->out_len * (1 - b->range + 2 * b->range * u)));
            }
            if (!strcmp(b->workload, "captions")) {
                q->kind = SERVE_UNDERSTAND, q->image = &images[i], q->lead = INSTRUCTION, q->in_len = 3;
            } else if (chat) {
                q->random_words = chat_seed(b, t);
                if (t > 0) { /* the previous turn joins the history */
                    hist[i][2 * t - 2] = serve_prompt_words(b->in_len, chat_seed(b, t - 1), i);
                    hist_ptr[i][2 * t - 2] = hist[i][2 * t - 2];
                    hist_ptr[i][2 * t - 1] = ASSISTANT_TURN;
                    if (!hist[i][2 * t - 2]) rc = -1;
                }
                q->history = hist_ptr[i], q->n_history = 2 * t;
            } else {
                q->random_words = b->seed * 16u + 1000u;
            }
        }
        double w = rc == 0 ? serve_load_run(svc->cl, r, per_round, b->concurrency, b->timeout_s) : -1;
        if (w < 0) rc = -1;
        else wall += w, account(r, per_round, out, ttft);
        serve_reqs_free(r, per_round);
    }
    double hits1 = metric(svc, "metamorph_prefix_cache_hits_total");
    if (rc == 0) {
        out->hits = isnan(hits1 - hits0) ? 0 : hits1 - hits0;
        out->prefill_computed = out->prompt_tokens - out->hits;
        out->wall_s = wall;
        out->req_per_s /= wall > 0 ? wall : 1;
        out->out_tok_per_s /= wall > 0 ? wall : 1;
        out->ttft_p50_ms = serve_summarise(ttft, out->requests).p50;
    }
    for (int i = 0; hist && i < per_round; i++)
        for (int k = 0; k < 2 * PREFIX_CHAT_TURNS; k++) free(hist[i][k]);
    free(r), free(ttft), free(hist), free(hist_ptr);
    return rc;
}

/* A fresh service with the cache on or off, warmed up, the workload, stopped. */
static int one_run(const prefix_bench *b, int cache, const serve_image *images, prefix_run *out) {
    static int n_runs;
    serve_service svc;
    char extra[1200];
    int w = snprintf(extra, sizeof extra, "\"prefix_cache\": %d", cache);
    if (b->trace_dir)
        snprintf(extra + w, sizeof extra - (size_t)w, ", \"trace_file\": \"%s/trace-%s-cache%d-%d.jsonl\"", b->trace_dir,
                 b->workload, cache, n_runs++);
    if (serve_spawn_start(&svc, b->model, b->stages, b->threads, b->worker_threads, extra) != 0) return -1;
    int captions = !strcmp(b->workload, "captions");
    int rc = captions && serve_spawn_workers(&svc, 1, 60) != 0 ? -1 : 0;
    /* warm-up: two requests that share nothing with the workload */
    serve_req warm[2] = {{.kind = SERVE_TEXT, .in_len = 16, .out_len = 4, .random_words = 7777},
                         {.kind = SERVE_TEXT, .in_len = 16, .out_len = 4, .random_words = 7777}};
    if (rc == 0 && serve_load_run(svc.cl, warm, 2, 2, b->timeout_s) < 0) rc = -1;
    serve_reqs_free(warm, 2);
    if (rc == 0) rc = run_workload(b, &svc, images, out);
    serve_spawn_stop(&svc, rc != 0 || out->failed);
    return rc;
}

static double median(double *v, int n) { return serve_summarise(v, n).p50; }

/* Medians of one field over runs[0..n). */
#define MEDIAN_OF(field, runs, n)                                                                  \
    ({                                                                                             \
        double _v[PREFIX_MAX_REPEATS];                                                             \
        for (int _k = 0; _k < (n); _k++) _v[_k] = (runs)[_k].field;                                \
        median(_v, (n));                                                                           \
    })

static void print_setting(const char *name, const prefix_run *runs, int n) {
    printf(" \"%s\": {\"requests\": %d, \"prompt_tokens\": %.0f, \"prefill_computed\": %.0f, \"prefix_hits\": %.0f, "
           "\"ttft_p50_ms\": %.2f, \"request_throughput\": %.3f, \"output_throughput\": %.2f, \"output_throughput_runs\": [",
           name, runs[0].requests, MEDIAN_OF(prompt_tokens, runs, n), MEDIAN_OF(prefill_computed, runs, n),
           MEDIAN_OF(hits, runs, n), MEDIAN_OF(ttft_p50_ms, runs, n), MEDIAN_OF(req_per_s, runs, n),
           MEDIAN_OF(out_tok_per_s, runs, n));
    for (int k = 0; k < n; k++) printf("%s%.2f", k ? ", " : "", runs[k].out_tok_per_s);
    printf("]},\n");
}

static double ratio(double num, double den) { return den > 0 ? num / den : 0; }

int serve_prefix_compare(const prefix_bench *b) {
    if (b->repeats < 1 || b->repeats > PREFIX_MAX_REPEATS) {
        fprintf(stderr, "serve: --repeats 1..%d for the prefix workloads\n", PREFIX_MAX_REPEATS);
        return 1;
    }
    int captions = !strcmp(b->workload, "captions");
    serve_image *images = calloc((size_t)b->n, sizeof *images);
    if (!images || (captions && serve_images_make(b->image, 1, b->n, images) != 0)) {
        free(images);
        return 1;
    }
    prefix_run runs[2][PREFIX_MAX_REPEATS];
    int done = 0, failed = 0;
    for (; done < b->repeats; done++) { /* off, on, off, on, ...: drift hits both alike */
        if (one_run(b, 0, images, &runs[0][done]) != 0 || one_run(b, 1, images, &runs[1][done]) != 0) break;
        failed += runs[0][done].failed + runs[1][done].failed;
    }
    serve_images_free(images, captions ? b->n : 0);
    free(images);
    if (done == 0) return 1;
    int chat = !strcmp(b->workload, "chat");
    printf("{\"mode\": \"prefix_cache\", \"workload\": \"%s\", \"model\": \"%s\", \"stages\": %d, \"threads\": %d, "
           "\"host_cpus\": %ld,\n \"requests\": %d, \"concurrency\": %d, \"input_len\": %d, \"output_len\": %d, "
           "\"range_ratio\": %.2f, \"chat_turns\": %d, \"repeats\": %d,\n",
           b->workload, b->model, b->stages, b->threads, sysconf(_SC_NPROCESSORS_ONLN),
           chat ? b->concurrency * PREFIX_CHAT_TURNS : b->n, b->concurrency, captions ? 3 : b->in_len, b->out_len,
           b->range, chat ? PREFIX_CHAT_TURNS : 0, done);
    print_setting("off", runs[0], done);
    print_setting("on", runs[1], done);
    printf(" \"on_vs_off\": {\"prefill_computed\": %.3f, \"ttft_p50_speedup\": %.3f, \"output_throughput\": %.3f, "
           "\"request_throughput\": %.3f},\n \"failed\": %d}\n",
           ratio(MEDIAN_OF(prefill_computed, runs[1], done), MEDIAN_OF(prefill_computed, runs[0], done)),
           ratio(MEDIAN_OF(ttft_p50_ms, runs[0], done), MEDIAN_OF(ttft_p50_ms, runs[1], done)),
           ratio(MEDIAN_OF(out_tok_per_s, runs[1], done), MEDIAN_OF(out_tok_per_s, runs[0], done)),
           ratio(MEDIAN_OF(req_per_s, runs[1], done), MEDIAN_OF(req_per_s, runs[0], done)), failed);
    return done == b->repeats && failed == 0 ? 0 : 1;
}
