/* A minimal HTTP/1.1 client for our own plain-text endpoints (the coordinator's
 * /metrics, /healthz, /readyz): one request with Connection: close, the whole reply
 * read into memory. Tests, benchmarks and tools read the metrics through it, and
 * mm_prometheus_sample picks one sample out of the Prometheus text. No TLS, no
 * redirects, no chunked decoding (our server sends Content-Length and closes). */
#ifndef MM_HTTP_CLIENT_H
#define MM_HTTP_CLIENT_H

#include <stddef.h>

#include "status.h"

typedef struct {
    int status;          /* HTTP status code */
    char *raw;           /* [raw_len + 1] the whole reply, NUL-terminated, malloc'd */
    size_t raw_len;
    const char *head_end; /* inside raw: the "\r\n\r\n" that ends the head */
    const char *body;    /* inside raw: the body, NUL-terminated */
    size_t body_len;
} mm_http_reply;

/* METHOD path to hostport ("host:port", IPv4/IPv6 address or name), waiting at most
 * timeout_s for the reply (0: no limit). MM_ERR_IO (connection refused, timeout, not
 * an HTTP reply) with the address in the message. */
mm_status mm_http_request(const char *hostport, const char *method, const char *path, double timeout_s,
                          mm_http_reply *out);
void mm_http_reply_free(mm_http_reply *r);

/* The value of the sample line "series value" (series with its labels exactly as
 * rendered, e.g. metamorph_pool_workers{pool="encode"}) in Prometheus text; NAN when
 * absent. */
double mm_prometheus_sample(const char *text, const char *series);

#endif
