/* The image workloads of bench/serve, shared by --server and --spawn:
 *   encode  understanding requests, one distinct image each, a 4-word prompt and
 *           max_new_tokens 1: images/s through the encoder pool (plus a prefill);
 *   decode  generation requests with a 4-word prompt, 64 visual tokens and a fixed
 *           number of diffusion steps: images/s through the decoder pool;
 *   mixed   text, understanding and generation requests interleaved (i % 3) at the
 *           planned arrivals: end-to-end latency per request kind.
 * encode and decode send every request at once (concurrency of them in flight); the
 * throughput is completed images / wall time of a run, with repeats the median run. */
#ifndef MM_BENCH_SERVE_WORKLOADS_H
#define MM_BENCH_SERVE_WORKLOADS_H

#include <stdint.h>

#include "bench/serve_load.h"
#include "bench/serve_stats.h"

#define SERVE_MAX_REPEATS 16

typedef struct {
    mm_client *cl;
    const char *image_path;  /* the base of every distinct image */
    uint64_t next_image;     /* index of the next distinct image (advanced by each run) */
    int concurrency, in_len, out_len, steps;
    double rate, range;      /* arrivals (inf: all at once) and length spread, as for text */
    unsigned seed;
    double timeout_s;        /* per request */
} serve_workload;

typedef struct {
    int requests, failed, repeats;
    double images_per_s;                      /* median over the repeats */
    double images_per_s_run[SERVE_MAX_REPEATS];
    serve_summary e2el;                       /* ms, every completed request of every repeat */
} serve_images_result;

typedef struct {
    int requests, failed;
    double wall_s;
    serve_summary e2el[SERVE_N_KINDS], ttft[SERVE_N_KINDS]; /* ms */
} serve_mixed_result;

/* Arrival times (Poisson at w->rate, from w->seed) and lengths (uniform in
 * len * (1 +- range)) of n requests of the given kind. */
void serve_plan(const serve_workload *w, serve_kind kind, serve_req *r, int n);
/* kind SERVE_UNDERSTAND (encode) or SERVE_GENERATE (decode): repeats runs of n
 * requests. 0, or -1 when a run could not be made (message on stderr). */
int serve_run_images(serve_workload *w, serve_kind kind, int n, int repeats, serve_images_result *out);
/* n mixed requests. 0, or -1 as above. */
int serve_run_mixed(serve_workload *w, int n, serve_mixed_result *out);

/* JSON objects of the results, on one line, no newline; each latency summary is
 * {"n": .., "mean": .., "p50": .., "p90": .., "p99": ..}. */
void serve_print_images(const serve_images_result *r);
void serve_print_mixed(const serve_mixed_result *r);

#endif
