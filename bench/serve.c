/* bench/serve: load generator for the service, in the manner of vLLM's
 * benchmark_serving. Against a running service (--server) it plays one workload:
 *   text    (default) Poisson arrivals at --rate requests/s (inf: all at once), at most
 *           --concurrency in flight, prompt and output lengths uniform in
 *           [len * (1 - range), len * (1 + range)], streamed: throughput, TTFT / TPOT /
 *           ITL / E2E mean, median, p99 (ms), each stage's utilisation (busy / wall);
 *   encode, decode, mixed (serve_workloads.h): images/s through the encoder / decoder
 *           pool, latency percentiles per request kind.
 * With --spawn it starts the service itself (serve_spawn.h) and, for each count in
 * --workers, grows both pools to that many workers and runs encode, decode and mixed:
 * images/s per count and the ratio last count / first count; with --spawn --workload
 * captions|chat|random it compares the service with prefix caching off and on
 * (serve_prefix.h). --http HOST:PORT sends the
 * same requests through the OpenAI-compatible door (streamed chat completions) instead
 * of gRPC, so the two doors can be compared. One JSON object on
 * stdout; timings are reported, never asserted. */
#include <curl/curl.h>
#include <getopt.h>
#include <sodium.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/http_client.h"
#include "bench/serve_load.h"
#include "bench/serve_prefix.h"
#include "bench/serve_spawn.h"
#include "bench/serve_stats.h"
#include "bench/serve_workloads.h"

#define MAX_COUNTS 8

typedef struct {
    const char *server, *workload, *model, *image, *http, *trace_dir;
    int n, concurrency, in_len, out_len, steps, repeats, spawn, stages, threads, worker_threads;
    int workers[MAX_COUNTS], n_counts;
    double rate, range, timeout_s;
    unsigned seed;
} serve_args;

static void usage(void) {
    fprintf(stderr,
            "usage: serve [--server ADDR] [--workload text|encode|decode|mixed] [--num-prompts N]\n"
            "             [--rate R|inf] [--concurrency C] [--input-len L] [--output-len L] [--range-ratio F]\n"
            "             [--seed S] [--image-steps N] [--repeats N] [--image PNG] [--timeout S]\n"
            "             [--http HOST:PORT]   requests through the OpenAI-compatible HTTP door\n"
            "                                  (--server still serves GetModelInfo for stage figures)\n"
            "       serve --spawn --model DIR [--workers 1,2] [--stages P] [--threads T] [--worker-threads T]\n"
            "             [the options above but --server and --workload]\n"
            "       serve --spawn --model DIR --workload captions|chat|random [--stages P] [--threads T]\n"
            "             [--num-prompts N] [--concurrency C] [--input-len L] [--output-len L] [--range-ratio F]\n"
            "             [--repeats N] [--image PNG]\n"
            "             prefix caching off vs on, each on a fresh service, alternately\n"
            "       --spawn ... --trace DIR: each spawned service writes its timeline (trace_file) into DIR,\n"
            "             for bench/trace_report.py\n");
}

/* "1,2,4" -> a->workers (ascending, 1..SPAWN_MAX_WORKERS); 0 or -1. */
static int parse_counts(const char *s, serve_args *a) {
    a->n_counts = 0;
    for (char *end; *s; s = *end ? end + 1 : end) {
        long v = strtol(s, &end, 10);
        int prev = a->n_counts ? a->workers[a->n_counts - 1] : 0;
        if (end == s || (*end && *end != ',') || v <= prev || v > SPAWN_MAX_WORKERS || a->n_counts == MAX_COUNTS)
            return -1;
        a->workers[a->n_counts++] = (int)v;
    }
    return a->n_counts ? 0 : -1;
}

static int parse(int argc, char **argv, serve_args *a) {
    static const struct option opts[] = {
        {"server", 1, 0, 's'},     {"num-prompts", 1, 0, 'n'}, {"rate", 1, 0, 'r'},          {"concurrency", 1, 0, 'c'},
        {"input-len", 1, 0, 'i'},  {"output-len", 1, 0, 'o'},  {"range-ratio", 1, 0, 'g'},   {"seed", 1, 0, 'S'},
        {"workload", 1, 0, 'w'},   {"image-steps", 1, 0, 'k'}, {"repeats", 1, 0, 'R'},       {"image", 1, 0, 'I'},
        {"timeout", 1, 0, 't'},    {"spawn", 0, 0, 'x'},       {"model", 1, 0, 'm'},         {"workers", 1, 0, 'W'},
        {"stages", 1, 0, 'P'},     {"threads", 1, 0, 'T'},     {"worker-threads", 1, 0, 'U'}, {"http", 1, 0, 'H'},
        {"trace", 1, 0, 'D'},      {0, 0, 0, 0}};
    /* -1: the mode's default, set below */
    *a = (serve_args){"127.0.0.1:50051", "text", NULL, MM_SOURCE_DIR "/assets/images/example.png", NULL, NULL, -1, -1, -1, -1,
                      10, -1, 0, 1, 1, 1, {1, 2}, 2, INFINITY, 0.0, 600, 0};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': a->server = optarg; break;
        case 'n': a->n = atoi(optarg); break;
        case 'r': a->rate = atof(optarg); break;
        case 'c': a->concurrency = atoi(optarg); break;
        case 'i': a->in_len = atoi(optarg); break;
        case 'o': a->out_len = atoi(optarg); break;
        case 'g': a->range = atof(optarg); break;
        case 'S': a->seed = (unsigned)atoi(optarg); break;
        case 'w': a->workload = optarg; break;
        case 'k': a->steps = atoi(optarg); break;
        case 'R': a->repeats = atoi(optarg); break;
        case 'I': a->image = optarg; break;
        case 't': a->timeout_s = atof(optarg); break;
        case 'x': a->spawn = 1; break;
        case 'm': a->model = optarg; break;
        case 'W':
            if (parse_counts(optarg, a) != 0) {
                fprintf(stderr, "serve: --workers wants ascending counts 1..%d, e.g. 1,2\n", SPAWN_MAX_WORKERS);
                return -1;
            }
            break;
        case 'P': a->stages = atoi(optarg); break;
        case 'T': a->threads = atoi(optarg); break;
        case 'U': a->worker_threads = atoi(optarg); break;
        case 'H': a->http = optarg; break;
        case 'D': a->trace_dir = optarg; break;
        default: usage(); return -1;
        }
    }
    /* --spawn: about a minute on the tiny model with 1 and 2 workers per pool */
    const int defaults[2][5] = {{64, 16, 64, 64, 3}, {96, 8, 16, 16, 5}};
    int *field[5] = {&a->n, &a->concurrency, &a->in_len, &a->out_len, &a->repeats};
    for (int k = 0; k < 5; k++)
        if (*field[k] == -1) *field[k] = defaults[a->spawn][k];
    static const char *const WORKLOADS[] = {"text", "encode", "decode", "mixed"};
    int known = a->spawn && serve_prefix_is_workload(a->workload);
    for (int k = 0; k < 4; k++) known |= !strcmp(a->workload, WORKLOADS[k]);
    if (optind < argc || !known || a->n < 1 || a->concurrency < 1 || a->in_len < 1 || a->out_len < 1 || a->steps < 0 ||
        a->repeats < 1 || a->repeats > SERVE_MAX_REPEATS || a->stages < 1 || a->threads < 0 || a->worker_threads < 0 ||
        a->timeout_s <= 0 || (a->spawn && !a->model)) {
        usage();
        return -1;
    }
    return 0;
}

static serve_workload workload_of(const serve_args *a, mm_client *cl) {
    return (serve_workload){cl,        a->image, 0,        a->concurrency, a->in_len, a->out_len,
                            a->steps,  a->rate,  a->range, a->seed,        a->timeout_s};
}

static void print_rate(double rate) {
    if (isfinite(rate)) printf("%.3g", rate);
    else printf("\"inf\"");
}

static void print_legacy_stats(const char *name, double *v, int n, int last) {
    serve_summary s = serve_summarise(v, n);
    printf("  \"mean_%s_ms\": %.3f, \"median_%s_ms\": %.3f, \"p99_%s_ms\": %.3f%s\n", name, s.mean, name, s.p50, name,
           s.p99, last ? "" : ",");
}

/* --workload text against a running service: the original vLLM-like report. */
static int run_text(const serve_args *a, mm_client *cl, const Metamorph__V1__ModelInfo *before) {
    serve_workload w = workload_of(a, cl);
    serve_req *r = calloc((size_t)a->n, sizeof *r);
    double *ttft = calloc((size_t)a->n, sizeof(double)), *tpot = calloc((size_t)a->n, sizeof(double));
    double *e2e = calloc((size_t)a->n, sizeof(double));
    if (!r || !ttft || !tpot || !e2e) {
        fprintf(stderr, "serve: out of memory for %d requests\n", a->n);
        free(r), free(ttft), free(tpot), free(e2e);
        return 1;
    }
    serve_plan(&w, SERVE_TEXT, r, a->n);
    double wall = serve_load_run(cl, r, a->n, a->concurrency, a->timeout_s);
    Metamorph__V1__ModelInfo *after = serve_model_info(cl);
    long n_itl = 0, out_tok = 0, in_tok = 0;
    for (int i = 0; i < a->n; i++) n_itl += r[i].n_itl;
    double *itl = calloc((size_t)(n_itl ? n_itl : 1), sizeof(double));
    int ok = 0, n_tpot = 0;
    n_itl = 0;
    for (int i = 0; i < a->n && itl && wall > 0; i++) {
        const serve_req *q = &r[i];
        if (!serve_req_ok(q)) continue;
        ttft[ok] = (q->first - q->start) * 1e3, e2e[ok] = (q->end - q->start) * 1e3;
        ok++, out_tok += q->n_out, in_tok += q->n_in;
        if (q->n_out > 1) tpot[n_tpot++] = (q->end - q->first) * 1e3 / (q->n_out - 1);
        memcpy(itl + n_itl, q->itl, (size_t)q->n_itl * sizeof(double));
        n_itl += q->n_itl;
    }
    if (wall > 0 && itl) {
        printf("{\n  \"server\": \"%s\", \"door\": \"%s\", \"model\": \"%s\", \"workload\": \"text\", \"stages\": %zu,\n",
               a->http ? a->http : a->server, a->http ? "http" : "grpc", before->model, before->n_stages);
        printf("  \"num_prompts\": %d, \"request_rate\": ", a->n);
        print_rate(a->rate);
        printf(", \"concurrency\": %d, \"input_len\": %d, \"output_len\": %d, \"range_ratio\": %.2f,\n", a->concurrency,
               a->in_len, a->out_len, a->range);
        printf("  \"completed\": %d, \"failed\": %d, \"duration_s\": %.3f, \"total_input_tokens\": %ld, "
               "\"total_output_tokens\": %ld,\n",
               ok, a->n - ok, wall, in_tok, out_tok);
        printf("  \"request_throughput\": %.3f, \"output_throughput\": %.2f, \"total_token_throughput\": %.2f,\n",
               ok / wall, out_tok / wall, (in_tok + out_tok) / wall);
        printf("  \"stage_utilisation\": [");
        for (size_t k = 0; after && k < after->n_stages && k < before->n_stages; k++)
            printf("%s%.3f", k ? ", " : "", (after->stages[k]->busy_ms - before->stages[k]->busy_ms) / (wall * 1e3));
        printf("],\n");
        print_legacy_stats("ttft", ttft, ok, 0);
        print_legacy_stats("tpot", tpot, n_tpot, 0);
        print_legacy_stats("itl", itl, (int)n_itl, 0);
        print_legacy_stats("e2el", e2e, ok, 1);
        printf("}\n");
    }
    if (after) metamorph__v1__model_info__free_unpacked(after, NULL);
    serve_reqs_free(r, a->n);
    free(r), free(ttft), free(tpot), free(e2e), free(itl);
    return wall > 0 && itl && ok == a->n ? 0 : 1;
}

/* --workload encode|decode|mixed against a running service. */
static int run_one_image_workload(const serve_args *a, mm_client *cl, const Metamorph__V1__ModelInfo *info) {
    serve_workload w = workload_of(a, cl);
    int mixed = !strcmp(a->workload, "mixed");
    serve_kind kind = !strcmp(a->workload, "encode") ? SERVE_UNDERSTAND : SERVE_GENERATE;
    serve_images_result img;
    serve_mixed_result mix;
    int rc = mixed ? serve_run_mixed(&w, a->n, &mix) : serve_run_images(&w, kind, a->n, a->repeats, &img);
    int failed = mixed ? mix.failed : img.failed;
    if (rc != 0) return 1;
    printf("{\"server\": \"%s\", \"model\": \"%s\", \"workload\": \"%s\", \"stages\": %zu, \"concurrency\": %d, "
           "\"image_steps\": %d, \"request_rate\": ",
           a->server, info->model, a->workload, info->n_stages, a->concurrency, a->steps);
    print_rate(mixed ? a->rate : INFINITY);
    printf(",\n \"%s\": ", a->workload);
    if (mixed) serve_print_mixed(&mix);
    else serve_print_images(&img);
    printf("}\n");
    return failed ? 1 : 0;
}

typedef struct {
    int workers;
    serve_images_result enc, dec;
    serve_mixed_result mix;
} spawn_run;

/* One worker count of --spawn: warm-up (each new worker's first jobs), then the three
 * workloads. 0 or -1. */
static int spawn_count(const serve_args *a, serve_workload *w, spawn_run *run) {
    serve_images_result warm;
    return serve_run_images(w, SERVE_UNDERSTAND, 2 * run->workers, 1, &warm) == 0 &&
                   serve_run_images(w, SERVE_GENERATE, 2 * run->workers, 1, &warm) == 0 &&
                   serve_run_images(w, SERVE_UNDERSTAND, a->n, a->repeats, &run->enc) == 0 &&
                   serve_run_images(w, SERVE_GENERATE, a->n, a->repeats, &run->dec) == 0 &&
                   serve_run_mixed(w, a->n, &run->mix) == 0
               ? 0
               : -1;
}

static double ratio(double num, double den) { return den > 0 ? num / den : 0; }

static int run_failed(const spawn_run *r) { return r->enc.failed + r->dec.failed + r->mix.failed; }

/* The --spawn report of runs[0..n). */
static void print_spawn(const serve_args *a, const serve_service *svc, const spawn_run *runs, int n,
                        const char *metrics) {
    printf("{\"mode\": \"spawn\", \"model\": \"%s\", \"stages\": %d, \"threads\": %d, \"worker_threads\": %d, "
           "\"host_cpus\": %ld,\n \"requests_per_run\": %d, \"repeats\": %d, \"concurrency\": %d, \"image_steps\": %d, "
           "\"input_len\": %d, \"output_len\": %d,\n \"runs\": [",
           svc->model, a->stages, a->threads, a->worker_threads, sysconf(_SC_NPROCESSORS_ONLN), a->n, a->repeats,
           a->concurrency, a->steps, a->in_len, a->out_len);
    int failed = 0;
    for (int k = 0; k < n; k++) {
        printf("%s\n  {\"workers\": %d,\n   \"encode\": ", k ? "," : "", runs[k].workers);
        serve_print_images(&runs[k].enc);
        printf(",\n   \"decode\": ");
        serve_print_images(&runs[k].dec);
        printf(",\n   \"mixed\": ");
        serve_print_mixed(&runs[k].mix);
        printf("}");
        failed += run_failed(&runs[k]);
    }
    const spawn_run *first = &runs[0], *last = &runs[n > 0 ? n - 1 : 0];
    printf("],\n \"scaling\": {\"workers\": \"%d/%d\", \"encode_images_per_s\": %.3f, \"decode_images_per_s\": %.3f},\n",
           last->workers, first->workers, ratio(last->enc.images_per_s, first->enc.images_per_s),
           ratio(last->dec.images_per_s, first->dec.images_per_s));
    static const char *const SERIES[][2] = {
        {"embed_cache_hits", "metamorph_embed_cache_hits_total"},
        {"embed_cache_misses", "metamorph_embed_cache_misses_total"},
        {"encode_redispatches", "metamorph_pool_redispatches_total{pool=\"encode\"}"},
        {"decode_redispatches", "metamorph_pool_redispatches_total{pool=\"decode\"}"}};
    printf(" \"coordinator\": {");
    for (int k = 0; k < 4; k++) {
        double v = metrics ? mm_prometheus_sample(metrics, SERIES[k][1]) : NAN;
        printf("%s\"%s\": ", k ? ", " : "", SERIES[k][0]);
        if (isnan(v)) printf("null");
        else printf("%.0f", v);
    }
    printf("},\n \"failed\": %d, \"completed_counts\": %d}\n", failed, n);
}

/* --spawn: the service with growing pools. */
static int run_spawn(const serve_args *a) {
    serve_service svc;
    char extra[1200] = "";
    if (a->trace_dir) snprintf(extra, sizeof extra, "\"trace_file\": \"%s/trace.jsonl\"", a->trace_dir);
    if (serve_spawn_start(&svc, a->model, a->stages, a->threads, a->worker_threads, extra) != 0) return 1;
    serve_workload w = workload_of(a, svc.cl);
    spawn_run runs[MAX_COUNTS];
    int done = 0;
    while (done < a->n_counts) {
        runs[done].workers = a->workers[done];
        if (serve_spawn_workers(&svc, a->workers[done], 60) != 0 || spawn_count(a, &w, &runs[done]) != 0) break;
        done++;
    }
    mm_http_reply scrape;
    const char *metrics = NULL;
    if (mm_http_request(svc.metrics, "GET", "/metrics", 10, &scrape) == MM_OK && scrape.status == 200) metrics = scrape.body;
    else fprintf(stderr, "serve: GET /metrics: %s\n", scrape.raw ? "not 200" : mm_error_last());
    if (done) print_spawn(a, &svc, runs, done, metrics);
    mm_http_reply_free(&scrape);
    int failed = 0;
    for (int k = 0; k < done; k++) failed += run_failed(&runs[k]);
    int ok = done == a->n_counts && failed == 0;
    serve_spawn_stop(&svc, !ok);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    serve_args a;
    if (parse(argc, argv, &a) != 0) return 2;
    if (a.spawn && serve_prefix_is_workload(a.workload)) {
        prefix_bench b = {a.workload, a.model,  a.image,  a.n,       a.concurrency,    a.in_len,
                          a.out_len,  a.repeats, a.stages, a.threads, a.worker_threads, a.seed, a.timeout_s,
                          a.trace_dir, a.range};
        return serve_prefix_compare(&b);
    }
    if (a.spawn) return run_spawn(&a);
    if (a.http) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        if (sodium_init() < 0) return 1;
        serve_load_use_http(a.http);
    }
    mm_client *cl = NULL;
    if (mm_client_open(a.server, &cl) != MM_OK) {
        fprintf(stderr, "serve: %s: %s\n", a.server, mm_error_last());
        return 14;
    }
    Metamorph__V1__ModelInfo *info = serve_model_info(cl);
    if (!info) {
        fprintf(stderr, "serve: GetModelInfo failed on %s\n", a.server);
        mm_client_close(cl);
        return 14;
    }
    int rc = !strcmp(a.workload, "text") ? run_text(&a, cl, info) : run_one_image_workload(&a, cl, info);
    metamorph__v1__model_info__free_unpacked(info, NULL);
    mm_client_close(cl);
    return rc;
}
