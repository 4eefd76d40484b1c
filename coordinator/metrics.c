/* See metrics.h. METRICS below is the one place where a metric's name, kind, help and
 * label live; the registry holds one atomic slot per (metric, label value): a double
 * for counters and gauges, per-bucket counts plus a sum for histograms. */
#include "metrics.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/status.h>

#include "pipeline/serve_config.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

typedef enum { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM } metric_kind;

typedef struct {
    const char *name;              /* without the "metamorph_" prefix */
    metric_kind kind;
    const char *help;
    const char *label;             /* label name, NULL: unlabelled */
    const char *const *values;     /* [n_values] label values; NULL with a label: the stage ranks */
    int n_values;
} metric_def;

/* Indexed by grpc_status_code, so the engine passes the code it replies with. */
#define CODE(c) [GRPC_STATUS_##c] = #c
static const char *const GRPC_CODES[] = {
    CODE(OK), CODE(CANCELLED), CODE(UNKNOWN), CODE(INVALID_ARGUMENT), CODE(DEADLINE_EXCEEDED), CODE(NOT_FOUND),
    CODE(ALREADY_EXISTS), CODE(PERMISSION_DENIED), CODE(RESOURCE_EXHAUSTED), CODE(FAILED_PRECONDITION),
    CODE(ABORTED), CODE(OUT_OF_RANGE), CODE(UNIMPLEMENTED), CODE(INTERNAL), CODE(UNAVAILABLE), CODE(DATA_LOSS),
    CODE(UNAUTHENTICATED),
};
#undef CODE
_Static_assert(N_OF(GRPC_CODES) == GRPC_STATUS_UNAUTHENTICATED + 1, "one label value per gRPC code");
static const char *const H2_REFUSALS[] = {
    [MM_METRICS_H2_PEER_LIMIT] = "peer_limit",           [MM_METRICS_H2_CONNECTION_LIMIT] = "connection_limit",
    [MM_METRICS_H2_HANDSHAKE_TIMEOUT] = "handshake_timeout", [MM_METRICS_H2_TLS] = "tls",
    [MM_METRICS_H2_BAD_PREFACE] = "bad_preface",         [MM_METRICS_H2_HEADER_BLOCK] = "header_block",
    [MM_METRICS_H2_RESET_RATE] = "reset_rate",           [MM_METRICS_H2_CONTROL_RATE] = "control_rate",
};
_Static_assert(N_OF(H2_REFUSALS) == MM_METRICS_H2_REFUSAL_COUNT, "one label value per refusal");
static const char *const POOLS[] = {[MM_METRICS_POOL_ENCODE] = "encode", [MM_METRICS_POOL_DECODE] = "decode"};

#define LABELS(name, values) name, values, (int)N_OF(values)
#define STAGE_LABEL "stage", NULL, 0
#define NO_LABEL NULL, NULL, 0
static const metric_def METRICS[MM_METRIC_COUNT] = {
    [MM_METRIC_REQUESTS_TOTAL] = {"requests_total", KIND_COUNTER, "Finished requests by final gRPC status.",
                                  LABELS("status", GRPC_CODES)},
    [MM_METRIC_QUEUE_DEPTH] = {"queue_depth", KIND_GAUGE, "Requests admitted and waiting to run.", NO_LABEL},
    [MM_METRIC_RUNNING_SEQUENCES] = {"running_sequences", KIND_GAUGE, "Sequences being prefilled or decoded.",
                                     NO_LABEL},
    [MM_METRIC_KV_BLOCKS_USED] = {"kv_blocks_used", KIND_GAUGE, "KV cache blocks held by sequences.", NO_LABEL},
    [MM_METRIC_KV_BLOCKS_CAPACITY] = {"kv_blocks_capacity", KIND_GAUGE, "KV cache blocks per stage.", NO_LABEL},
    [MM_METRIC_TTFT_SECONDS] = {"ttft_seconds", KIND_HISTOGRAM, "Time from arrival to the first output.", NO_LABEL},
    [MM_METRIC_TPOT_SECONDS] = {"tpot_seconds", KIND_HISTOGRAM, "Time between consecutive output tokens.",
                                NO_LABEL},
    [MM_METRIC_REQUEST_DURATION_SECONDS] = {"request_duration_seconds", KIND_HISTOGRAM,
                                            "Time from arrival to the final status.", NO_LABEL},
    [MM_METRIC_GENERATED_TOKENS_TOTAL] = {"generated_tokens_total", KIND_COUNTER, "Tokens generated (text tokens and visual tokens).",
                                          NO_LABEL},
    [MM_METRIC_GENERATED_IMAGES_TOTAL] = {"generated_images_total", KIND_COUNTER, "Images generated.", NO_LABEL},
    [MM_METRIC_STAGE_BUSY_SECONDS_TOTAL] = {"stage_busy_seconds_total", KIND_COUNTER,
                                            "Compute time of each pipeline stage (MPI rank).", STAGE_LABEL},
    [MM_METRIC_POOL_WORKERS] = {"pool_workers", KIND_GAUGE, "Live workers in each pool.", LABELS("pool", POOLS)},
    [MM_METRIC_POOL_JOBS_IN_FLIGHT] = {"pool_jobs_in_flight", KIND_GAUGE, "Jobs sent to a pool and not answered.",
                                       LABELS("pool", POOLS)},
    [MM_METRIC_POOL_REDISPATCHES_TOTAL] = {"pool_redispatches_total", KIND_COUNTER,
                                           "Jobs sent again after their worker died or timed out.",
                                           LABELS("pool", POOLS)},
    [MM_METRIC_EMBED_CACHE_HITS_TOTAL] = {"embed_cache_hits_total", KIND_COUNTER,
                                          "Images whose visual tokens came from the embedding cache.", NO_LABEL},
    [MM_METRIC_EMBED_CACHE_MISSES_TOTAL] = {"embed_cache_misses_total", KIND_COUNTER,
                                            "Images that had to be encoded.", NO_LABEL},
    [MM_METRIC_KV_BLOCKS_CACHED] = {"kv_blocks_cached", KIND_GAUGE,
                                    "KV cache blocks held by no sequence that keep a cached prefix (evictable).",
                                    NO_LABEL},
    [MM_METRIC_PREFIX_CACHE_QUERIES_TOTAL] = {"prefix_cache_queries_total", KIND_COUNTER,
                                              "Tokens looked up in the prefix cache when sequences were admitted.",
                                              NO_LABEL},
    [MM_METRIC_PREFIX_CACHE_HITS_TOTAL] = {"prefix_cache_hits_total", KIND_COUNTER,
                                           "Tokens found in the prefix cache (their prefill skipped).", NO_LABEL},
    [MM_METRIC_PREFIX_CACHE_EVICTIONS_TOTAL] = {"prefix_cache_evictions_total", KIND_COUNTER,
                                                "Cached KV blocks evicted to make room.", NO_LABEL},
    [MM_METRIC_HTTP2_CONNECTIONS] = {"http2_connections", KIND_GAUGE, "Connections open on the gRPC port.", NO_LABEL},
    [MM_METRIC_HTTP2_REFUSED_TOTAL] = {"http2_refused_total", KIND_COUNTER,
                                       "Connections the gRPC port closed, by the limit they broke.",
                                       LABELS("reason", H2_REFUSALS)},
};
#undef LABELS
#undef STAGE_LABEL
#undef NO_LABEL

/* Upper bounds ("le") of every histogram, seconds: 1 ms to 10 min. */
static const double BUCKET_BOUNDS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                       2.5,   5,      10,    30,   60,    120,  300, 600};
#define N_BUCKETS (N_OF(BUCKET_BOUNDS) + 1) /* the last one: above every bound (+Inf) */

typedef struct {
    _Atomic uint64_t count[N_BUCKETS]; /* observations per bucket, not cumulative */
    _Atomic double sum;
} histogram_slot;

struct mm_metrics {
    int n_stages;
    int n_series[MM_METRIC_COUNT]; /* label values of each metric (1 when unlabelled) */
    size_t first[MM_METRIC_COUNT]; /* its first slot: in value[] (counter, gauge) or hist[] (histogram) */
    _Atomic double *value;         /* [sum of n_series over counters and gauges] */
    histogram_slot *hist;          /* [sum of n_series over histograms] */
};

mm_status mm_metrics_create(int n_stages, mm_metrics **out) {
    *out = NULL;
    if (n_stages < 1 || n_stages > MM_MAX_STAGES)
        return MM_ERROR(MM_ERR_INVALID, "metrics: %d stages (1..%d)", n_stages, MM_MAX_STAGES);
    mm_metrics *m = calloc(1, sizeof *m);
    CHECK(CHECK_ALLOC(m));
    m->n_stages = n_stages;
    size_t n_values = 0, n_hist = 0;
    for (int id = 0; id < MM_METRIC_COUNT; id++) {
        const metric_def *d = &METRICS[id];
        if (!d->name) {
            free(m);
            return MM_ERROR(MM_ERR_INTERNAL, "metrics: metric %d has no entry in the table", id);
        }
        m->n_series[id] = !d->label ? 1 : d->values ? d->n_values : n_stages;
        size_t *next = d->kind == KIND_HISTOGRAM ? &n_hist : &n_values;
        m->first[id] = *next;
        *next += (size_t)m->n_series[id];
    }
    m->value = calloc(n_values, sizeof *m->value);
    m->hist = calloc(n_hist, sizeof *m->hist);
    mm_status s = CHECK_ALLOC(m->value);
    if (s == MM_OK) s = CHECK_ALLOC(m->hist);
    if (s != MM_OK) {
        mm_metrics_free(m);
        return s;
    }
    for (size_t i = 0; i < n_values; i++) atomic_init(&m->value[i], 0.0);
    for (size_t i = 0; i < n_hist; i++) {
        for (size_t b = 0; b < N_BUCKETS; b++) atomic_init(&m->hist[i].count[b], 0);
        atomic_init(&m->hist[i].sum, 0.0);
    }
    *out = m;
    return MM_OK;
}

void mm_metrics_free(mm_metrics *m) {
    if (!m) return;
    free(m->value);
    free(m->hist);
    free(m);
}

/* The metric exists, is of the kind the operation needs and has this label value. */
static mm_status check_update(const mm_metrics *m, mm_metric_id id, int label, int histogram, const char *op) {
    if ((int)id < 0 || id >= MM_METRIC_COUNT) return MM_ERROR(MM_ERR_INVALID, "metrics: %s of metric %d", op, id);
    if ((METRICS[id].kind == KIND_HISTOGRAM) != histogram)
        return MM_ERROR(MM_ERR_INVALID, "metrics: %s on metamorph_%s", op, METRICS[id].name);
    if (label < 0 || label >= m->n_series[id])
        return MM_ERROR(MM_ERR_INVALID, "metrics: %s of metamorph_%s with label index %d (0..%d)", op,
                        METRICS[id].name, label, m->n_series[id] - 1);
    return MM_OK;
}

static void atomic_add_double(_Atomic double *x, double v) {
    double old = atomic_load_explicit(x, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(x, &old, old + v, memory_order_relaxed, memory_order_relaxed)) {
    }
}

mm_status mm_metrics_add(mm_metrics *m, mm_metric_id id, int label, double v) {
    if (!m) return MM_OK;
    CHECK(check_update(m, id, label, 0, "add"));
    if (!isfinite(v) || (METRICS[id].kind == KIND_COUNTER && v < 0))
        return MM_ERROR(MM_ERR_INVALID, "metrics: add %g to metamorph_%s", v, METRICS[id].name);
    atomic_add_double(&m->value[m->first[id] + (size_t)label], v);
    return MM_OK;
}

mm_status mm_metrics_inc(mm_metrics *m, mm_metric_id id, int label) { return mm_metrics_add(m, id, label, 1.0); }

mm_status mm_metrics_set(mm_metrics *m, mm_metric_id id, int label, double v) {
    if (!m) return MM_OK;
    CHECK(check_update(m, id, label, 0, "set"));
    if (!isfinite(v) || (METRICS[id].kind == KIND_COUNTER && v < 0))
        return MM_ERROR(MM_ERR_INVALID, "metrics: set metamorph_%s to %g", METRICS[id].name, v);
    atomic_store_explicit(&m->value[m->first[id] + (size_t)label], v, memory_order_relaxed);
    return MM_OK;
}

mm_status mm_metrics_observe(mm_metrics *m, mm_metric_id id, int label, double v) {
    if (!m) return MM_OK;
    CHECK(check_update(m, id, label, 1, "observe"));
    if (!isfinite(v)) return MM_ERROR(MM_ERR_INVALID, "metrics: observe %g in metamorph_%s", v, METRICS[id].name);
    size_t b = 0;
    while (b < N_OF(BUCKET_BOUNDS) && v > BUCKET_BOUNDS[b]) b++;
    histogram_slot *h = &m->hist[m->first[id] + (size_t)label];
    atomic_fetch_add_explicit(&h->count[b], 1, memory_order_relaxed);
    atomic_add_double(&h->sum, v);
    return MM_OK;
}

/* ---- rendering (the HTTP thread) ---- */

/* Shortest of %.15g / %.17g that reads back as v; Prometheus spells the non-finite ones. */
static void format_value(double v, char buf[32]) {
    if (isnan(v)) {
        snprintf(buf, 32, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, 32, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(buf, 32, "%.15g", v);
        if (strtod(buf, NULL) != v) snprintf(buf, 32, "%.17g", v);
    }
}

/* Backslash and newline escaped (HELP text); also double quotes inside label values. */
static void write_escaped(FILE *f, const char *s, int label_value) {
    for (; *s; s++) {
        if (*s == '\\') fputs("\\\\", f);
        else if (*s == '\n') fputs("\\n", f);
        else if (*s == '"' && label_value) fputs("\\\"", f);
        else fputc(*s, f);
    }
}

/* `{label="value"` for series i, then `,le="bound"` when le is given, then `}`; nothing
 * for an unlabelled series without le. */
static void write_labels(FILE *f, mm_metric_id id, int i, const char *le) {
    const metric_def *d = &METRICS[id];
    if (!d->label && !le) return;
    fputc('{', f);
    if (d->label) {
        char stage[16];
        snprintf(stage, sizeof stage, "%d", i + 1);
        fprintf(f, "%s=\"", d->label);
        write_escaped(f, d->values ? d->values[i] : stage, 1);
        fputc('"', f);
    }
    if (le) fprintf(f, "%sle=\"%s\"", d->label ? "," : "", le);
    fputc('}', f);
}

static void write_histogram(FILE *f, const mm_metrics *m, mm_metric_id id, int i) {
    const histogram_slot *h = &m->hist[m->first[id] + (size_t)i];
    const char *name = METRICS[id].name;
    uint64_t cumulative = 0;
    char le[32], sum[32];
    for (size_t b = 0; b < N_BUCKETS; b++) {
        cumulative += atomic_load_explicit(&h->count[b], memory_order_relaxed);
        if (b < N_OF(BUCKET_BOUNDS)) format_value(BUCKET_BOUNDS[b], le);
        else format_value(INFINITY, le);
        fprintf(f, "metamorph_%s_bucket", name);
        write_labels(f, id, i, le);
        fprintf(f, " %llu\n", (unsigned long long)cumulative);
    }
    format_value(atomic_load_explicit(&h->sum, memory_order_relaxed), sum);
    fprintf(f, "metamorph_%s_sum", name);
    write_labels(f, id, i, NULL);
    fprintf(f, " %s\nmetamorph_%s_count", sum, name);
    write_labels(f, id, i, NULL);
    fprintf(f, " %llu\n", (unsigned long long)cumulative); /* = the +Inf bucket, by construction */
}

mm_status mm_metrics_render(const mm_metrics *m, char **text, size_t *len) {
    *text = NULL, *len = 0;
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f) return MM_ERROR(MM_ERR_NOMEM, "metrics: open_memstream failed");
    static const char *const TYPE_NAMES[] = {"counter", "gauge", "histogram"};
    for (int id = 0; id < MM_METRIC_COUNT; id++) {
        const metric_def *d = &METRICS[id];
        fprintf(f, "# HELP metamorph_%s ", d->name);
        write_escaped(f, d->help, 0);
        fprintf(f, "\n# TYPE metamorph_%s %s\n", d->name, TYPE_NAMES[d->kind]);
        for (int i = 0; i < m->n_series[id]; i++) {
            if (d->kind == KIND_HISTOGRAM) {
                write_histogram(f, m, (mm_metric_id)id, i);
                continue;
            }
            char value[32];
            format_value(atomic_load_explicit(&m->value[m->first[id] + (size_t)i], memory_order_relaxed), value);
            fprintf(f, "metamorph_%s", d->name);
            write_labels(f, (mm_metric_id)id, i, NULL);
            fprintf(f, " %s\n", value);
        }
    }
    int write_failed = ferror(f);
    if (fclose(f) != 0 || write_failed) {
        free(buf);
        return MM_ERROR(MM_ERR_NOMEM, "metrics: rendering the exposition text failed");
    }
    *text = buf, *len = size;
    return MM_OK;
}
