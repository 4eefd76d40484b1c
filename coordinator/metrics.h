/* The coordinator's operator metrics (Prometheus): one registry, every metric defined
 * once in metrics.c's table. Updates are single atomic operations on preallocated
 * slots (no locks, no allocation, no string formatting), so the scheduler thread and
 * the gRPC threads can update while the HTTP thread renders. A scrape is not a global
 * snapshot: each value is read once, and a histogram's _count is the sum of the bucket
 * counts it read, so it always equals its +Inf bucket. */
#ifndef MM_COORD_METRICS_H
#define MM_COORD_METRICS_H

#include <stddef.h>

#include "common/status.h"

/* Every metric; "label" below is the index of the label value (0 when unlabelled). */
typedef enum {
    MM_METRIC_REQUESTS_TOTAL,             /* counter, status = numeric grpc_status_code (0 OK .. 16) */
    MM_METRIC_QUEUE_DEPTH,                /* gauge: requests admitted, not yet running */
    MM_METRIC_RUNNING_SEQUENCES,          /* gauge */
    MM_METRIC_KV_BLOCKS_USED,             /* gauge */
    MM_METRIC_KV_BLOCKS_CAPACITY,            /* gauge */
    MM_METRIC_TTFT_SECONDS,               /* histogram: arrival -> first token or image out */
    MM_METRIC_TPOT_SECONDS,               /* histogram: time between consecutive output tokens */
    MM_METRIC_REQUEST_DURATION_SECONDS,   /* histogram: arrival -> final status */
    MM_METRIC_GENERATED_TOKENS_TOTAL,     /* counter */
    MM_METRIC_GENERATED_IMAGES_TOTAL,     /* counter */
    MM_METRIC_STAGE_BUSY_SECONDS_TOTAL,   /* counter, stage = mm_mpi_driver_stage index k (shown as k+1, the rank) */
    MM_METRIC_POOL_WORKERS,               /* gauge, pool = mm_metrics_pool */
    MM_METRIC_POOL_JOBS_IN_FLIGHT,        /* gauge, pool */
    MM_METRIC_POOL_REDISPATCHES_TOTAL,    /* counter, pool */
    MM_METRIC_EMBED_CACHE_HITS_TOTAL,     /* counter */
    MM_METRIC_EMBED_CACHE_MISSES_TOTAL,   /* counter */
    MM_METRIC_KV_BLOCKS_CACHED,           /* gauge: blocks held by nobody that keep a cached prefix */
    MM_METRIC_PREFIX_CACHE_QUERIES_TOTAL, /* counter: prompt rows looked up at admission */
    MM_METRIC_PREFIX_CACHE_HITS_TOTAL,    /* counter: of those, rows found (their prefill skipped) */
    MM_METRIC_PREFIX_CACHE_EVICTIONS_TOTAL, /* counter: cached blocks dropped to make room */
    MM_METRIC_HTTP2_CONNECTIONS,          /* gauge: connections open on the gRPC port (h2_guard) */
    MM_METRIC_HTTP2_REFUSED_TOTAL,        /* counter, reason = mm_metrics_h2_refusal */
    MM_METRIC_COUNT
} mm_metric_id;

/* Label indices of the "pool" label. */
typedef enum { MM_METRICS_POOL_ENCODE = 0, MM_METRICS_POOL_DECODE = 1 } mm_metrics_pool;

/* Label indices of the "reason" label: why the gRPC port closed a connection. */
typedef enum {
    MM_METRICS_H2_PEER_LIMIT = 0,
    MM_METRICS_H2_CONNECTION_LIMIT,
    MM_METRICS_H2_HANDSHAKE_TIMEOUT,
    MM_METRICS_H2_TLS,
    MM_METRICS_H2_BAD_PREFACE, /* these four follow mm_h2_verdict's order */
    MM_METRICS_H2_HEADER_BLOCK,
    MM_METRICS_H2_RESET_RATE,
    MM_METRICS_H2_CONTROL_RATE,
    MM_METRICS_H2_REFUSAL_COUNT
} mm_metrics_h2_refusal;

typedef struct mm_metrics mm_metrics;

/* A registry with every series at 0; n_stages (1..MM_MAX_STAGES) sizes the stage label. */
mm_status mm_metrics_create(int n_stages, mm_metrics **out);
void mm_metrics_free(mm_metrics *m);

/* Updates; each is one atomic operation. m == NULL is a no-op (metrics off). An id of
 * the wrong kind (e.g. observe on a counter), a label index out of range, or a
 * negative/non-finite counter increment is MM_ERR_INVALID and changes nothing. */
mm_status mm_metrics_add(mm_metrics *m, mm_metric_id id, int label, double v); /* counter: v >= 0; gauge: any */
mm_status mm_metrics_inc(mm_metrics *m, mm_metric_id id, int label);           /* add 1 */
/* Gauges; and counters mirrored from a cumulative source (stage busy time). */
mm_status mm_metrics_set(mm_metrics *m, mm_metric_id id, int label, double v);
mm_status mm_metrics_observe(mm_metrics *m, mm_metric_id id, int label, double v); /* histograms */

/* The Prometheus text exposition format 0.0.4, every metric prefixed "metamorph_".
 * *text is malloc'd and NUL-terminated, *len excludes the NUL. */
mm_status mm_metrics_render(const mm_metrics *m, char **text, size_t *len);

#endif
