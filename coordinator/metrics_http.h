/* The coordinator's operator endpoint: a small HTTP server (libmicrohttpd, its own
 * polling thread) on the "metrics_listen" address. GET /metrics renders the registry
 * (Prometheus text 0.0.4); GET /healthz answers 200 "ok" while the process is alive;
 * GET /readyz mirrors the gRPC health service: 200 "SERVING" while *serving is 1, else
 * 503 "NOT_SERVING". Other paths: 404; other methods: 405; a missing or wrong API key
 * (when the service has keys and the path is not opened): 401. It only reads the registry
 * and the flag, so it never contends with the scheduler thread. */
#ifndef MM_COORD_METRICS_HTTP_H
#define MM_COORD_METRICS_HTTP_H

#include <stdatomic.h>

#include "api_keys.h"
#include "metrics.h"

typedef struct mm_metrics_http mm_metrics_http;

/* With keys, every path needs "Authorization: Bearer KEY" except those opened. */
typedef struct {
    mm_api_keys *keys;            /* NULL: open */
    int health_open, metrics_open; /* /healthz + /readyz, /metrics without a key */
} mm_metrics_http_auth;

/* Binds address ("host:port", "[v6]:port", ":port" = every interface, port 0 = any free
 * one) and starts serving. address "" means metrics are off: MM_OK and *out = NULL.
 * registry and serving must outlive the server. A port in use is MM_ERR_IO naming it. */
mm_status mm_metrics_http_start(const char *address, const mm_metrics *registry, const atomic_int *serving,
                                const mm_metrics_http_auth *auth, mm_metrics_http **out);
/* The bound TCP port (the one chosen when address asked for port 0). */
int mm_metrics_http_port(const mm_metrics_http *s);
/* Stops the thread, closes the port and frees s (NULL: no-op). */
void mm_metrics_http_stop(mm_metrics_http *s);

#endif
