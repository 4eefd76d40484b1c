/* The prefix-caching workloads of bench/serve (--spawn --workload captions|chat|random),
 * each run on a service started with the prefix cache off and then on, alternately,
 * --repeats times, so the baseline is measured in the same run:
 *   captions  one user message per request: a shared instruction of ~200 tokens, a
 *             distinct image (so only the instruction can be reused), a few words;
 *             all requests offered at once to --concurrency slots;
 *   chat      --concurrency conversations of PREFIX_CHAT_TURNS turns; round t sends
 *             every conversation's turn t at once (the earlier turns re-sent, the
 *             assistant's turns a fixed text), rounds one after another;
 *   random    --num-prompts prompts of --input-len words drawn at random (nothing to
 *             share), all at once: what the cache costs when it never hits.
 * Reported per setting (medians over the repeats): prompt tokens sent, prefill tokens
 * computed (sent less the cache's hits, from the coordinator's metrics), TTFT p50,
 * request and output-token throughput; and the on/off ratios. */
#ifndef MM_BENCH_SERVE_PREFIX_H
#define MM_BENCH_SERVE_PREFIX_H

#include "bench/serve_spawn.h"

#define PREFIX_CHAT_TURNS 4
#define PREFIX_MAX_REPEATS 8

typedef struct {
    const char *workload;      /* captions, chat, random */
    const char *model, *image; /* the service's model; the base image of captions */
    int n, concurrency, in_len, out_len, repeats, stages, threads, worker_threads;
    unsigned seed;
    double timeout_s;
    const char *trace_dir;     /* NULL, or each service's timeline goes to DIR/trace-WORKLOAD-cacheC-K.jsonl */
    double range;              /* output lengths uniform in out_len * [1 - range, 1 + range], the same each run */
} prefix_bench;

typedef struct {
    int requests, failed;
    double prompt_tokens, prefill_computed, hits;
    double ttft_p50_ms, req_per_s, out_tok_per_s, wall_s;
} prefix_run;

/* Is name one of the workloads above? */
int serve_prefix_is_workload(const char *name);
/* Runs the comparison and prints one JSON object. 0, or 1 when a run failed. */
int serve_prefix_compare(const prefix_bench *b);

#endif
