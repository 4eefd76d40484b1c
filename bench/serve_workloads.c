/* See serve_workloads.h. */
#include "serve_workloads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/serve_images.h"

#define IMAGE_PROMPT_WORDS 4

void serve_plan(const serve_workload *w, serve_kind kind, serve_req *r, int n) {
    unsigned st = w->seed;
    double t = 0;
    for (int i = 0; i < n; i++) {
        if (isfinite(w->rate) && w->rate > 0) t += -log(1.0 - (double)rand_r(&st) / ((double)RAND_MAX + 1)) / w->rate;
        double u1 = (double)rand_r(&st) / RAND_MAX, u2 = (double)rand_r(&st) / RAND_MAX;
        memset(&r[i], 0, sizeof r[i]);
        r[i].kind = kind, r[i].arrival = t;
        r[i].in_len = (int)fmax(1, round(w->in_len * (1 - w->range + 2 * w->range * u1)));
        r[i].out_len = (int)fmax(1, round(w->out_len * (1 - w->range + 2 * w->range * u2)));
        if (kind == SERVE_GENERATE) r[i].out_len = SERVE_IMAGE_TOKENS, r[i].steps = w->steps;
    }
}

/* n requests with their images (images[] has one per request that needs one), or -1. */
static int make_requests(serve_workload *w, serve_req *r, int n, serve_image *images, int *n_images) {
    *n_images = 0;
    for (int i = 0; i < n; i++) *n_images += r[i].kind == SERVE_UNDERSTAND;
    if (*n_images && serve_images_make(w->image_path, w->next_image, *n_images, images) != 0) return -1;
    w->next_image += (uint64_t)*n_images;
    for (int i = 0, k = 0; i < n; i++)
        if (r[i].kind == SERVE_UNDERSTAND) r[i].image = &images[k++];
    return 0;
}

/* Plays r[0..n) (making their images first); the wall time or -1. */
static double play(serve_workload *w, serve_req *r, int n) {
    serve_image *images = calloc((size_t)n, sizeof *images);
    int n_images = 0;
    if (!images || make_requests(w, r, n, images, &n_images) != 0) {
        if (!images) fprintf(stderr, "serve: out of memory for %d images\n", n);
        free(images);
        return -1;
    }
    double wall = serve_load_run(w->cl, r, n, w->concurrency, w->timeout_s);
    serve_images_free(images, n_images);
    free(images);
    for (int i = 0; i < n; i++) r[i].image = NULL;
    return wall;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int serve_run_images(serve_workload *w, serve_kind kind, int n, int repeats, serve_images_result *out) {
    memset(out, 0, sizeof *out);
    if (repeats < 1 || repeats > SERVE_MAX_REPEATS || n < 1) {
        fprintf(stderr, "serve: want 1..%d repeats of at least 1 request\n", SERVE_MAX_REPEATS);
        return -1;
    }
    serve_req *r = calloc((size_t)n, sizeof *r);
    double *e2el = calloc((size_t)n * (size_t)repeats, sizeof *e2el);
    int rc = r && e2el ? 0 : -1, n_e2el = 0;
    if (rc) fprintf(stderr, "serve: out of memory for %d requests\n", n);
    for (int k = 0; k < repeats && rc == 0; k++) {
        serve_plan(w, kind, r, n);
        for (int i = 0; i < n; i++) r[i].in_len = IMAGE_PROMPT_WORDS, r[i].arrival = 0;
        if (kind == SERVE_UNDERSTAND) {
            for (int i = 0; i < n; i++) r[i].out_len = 1;
        }
        double wall = play(w, r, n);
        if (wall <= 0) rc = -1;
        int ok = 0;
        for (int i = 0; i < n && rc == 0; i++)
            if (serve_req_ok(&r[i])) ok++, e2el[n_e2el++] = (r[i].end - r[i].start) * 1e3;
        serve_reqs_free(r, n);
        out->requests += n, out->failed += n - ok, out->repeats++;
        out->images_per_s_run[k] = wall > 0 ? ok / wall : 0;
    }
    double sorted[SERVE_MAX_REPEATS];
    memcpy(sorted, out->images_per_s_run, sizeof sorted);
    qsort(sorted, (size_t)out->repeats, sizeof *sorted, cmp_d);
    out->images_per_s = serve_quantile(sorted, out->repeats, 0.5);
    out->e2el = serve_summarise(e2el, n_e2el);
    free(e2el);
    free(r);
    return rc;
}

int serve_run_mixed(serve_workload *w, int n, serve_mixed_result *out) {
    memset(out, 0, sizeof *out);
    serve_req *r = calloc((size_t)n, sizeof *r);
    double *v = calloc((size_t)n, sizeof *v);
    if (!r || !v) {
        fprintf(stderr, "serve: out of memory for %d requests\n", n);
        free(r), free(v);
        return -1;
    }
    serve_plan(w, SERVE_TEXT, r, n);
    for (int i = 0; i < n; i++) {
        r[i].kind = (serve_kind)(i % SERVE_N_KINDS);
        if (r[i].kind == SERVE_GENERATE) r[i].out_len = SERVE_IMAGE_TOKENS, r[i].steps = w->steps;
    }
    out->wall_s = play(w, r, n);
    out->requests = n;
    for (int kind = 0; kind < SERVE_N_KINDS; kind++) {
        for (int pass = 0; pass < 2; pass++) {
            int m = 0;
            for (int i = 0; i < n; i++)
                if (r[i].kind == (serve_kind)kind && serve_req_ok(&r[i]))
                    v[m++] = ((pass ? r[i].first : r[i].end) - r[i].start) * 1e3;
            if (pass) out->ttft[kind] = serve_summarise(v, m);
            else out->e2el[kind] = serve_summarise(v, m);
        }
    }
    for (int i = 0; i < n; i++) out->failed += !serve_req_ok(&r[i]);
    serve_reqs_free(r, n);
    free(r), free(v);
    return out->wall_s > 0 ? 0 : -1;
}

static void print_summary(const serve_summary *s) {
    printf("{\"n\": %d, \"mean\": %.2f, \"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f}", s->n, s->mean, s->p50, s->p90, s->p99);
}

void serve_print_images(const serve_images_result *r) {
    printf("{\"requests\": %d, \"failed\": %d, \"images_per_s\": %.3f, \"images_per_s_runs\": [", r->requests, r->failed,
           r->images_per_s);
    for (int k = 0; k < r->repeats; k++) printf("%s%.3f", k ? ", " : "", r->images_per_s_run[k]);
    printf("], \"e2el_ms\": ");
    print_summary(&r->e2el);
    printf("}");
}

void serve_print_mixed(const serve_mixed_result *r) {
    printf("{\"requests\": %d, \"failed\": %d, \"duration_s\": %.3f, \"request_throughput\": %.3f", r->requests, r->failed,
           r->wall_s, r->wall_s > 0 ? (r->requests - r->failed) / r->wall_s : 0);
    for (int pass = 0; pass < 2; pass++) {
        printf(", \"%s\": {", pass ? "ttft_ms" : "e2el_ms");
        for (int k = 0; k < SERVE_N_KINDS; k++) {
            printf("%s\"%s\": ", k ? ", " : "", serve_kind_name[k]);
            print_summary(pass ? &r->ttft[k] : &r->e2el[k]);
        }
        printf("}");
    }
    printf("}");
}
