/* The coordinator's OpenAI-compatible HTTP door (libmicrohttpd + jansson), beside the
 * gRPC door and on the same scheduler thread: a body becomes the GenerateRequest a gRPC
 * client would send (openai_request.c), validate.c checks it as for gRPC, and it goes
 * to the scheduler over the same inproc socket; replies come back on an inproc socket
 * of its own (call ids with MM_CALL_ID_HTTP). Routes: POST /v1/chat/completions,
 * /v1/completions, /v1/images/generations; GET /v1/models, /v1/models/{id}, /health.
 *
 * One thread per connection (libmicrohttpd's), which waits for its request's replies:
 * simple to follow, and it watches its socket while it waits, so a client that hangs
 * up cancels its request all the way to the pools, as a cancelled gRPC call does.
 * It never computes or schedules. */
#ifndef MM_COORD_HTTP_SERVER_H
#define MM_COORD_HTTP_SERVER_H

#include <stdatomic.h>

#include "api_keys.h"
#include "metrics.h"
#include "tls_files.h"
#include "validate.h"

typedef struct {
    const char *listen;        /* "host:port" */
    size_t max_body_bytes;     /* larger bodies: 413 */
    unsigned max_connections;
    void *zmq_ctx;             /* the scheduler thread has bound the inproc endpoints */
    mm_limits limits;          /* as the gRPC door's */
    const char *model_name;    /* GET /v1/models; requests naming another model get 404 */
    int32_t image_side;        /* pixels of a generated image; 0: no image generation */
    atomic_int *serving;       /* health: 1 SERVING */
    mm_metrics *metrics;       /* requests by status, durations; NULL: none */
    const mm_tls_files *tls;   /* NULL or no cert: plain HTTP */
    mm_api_keys *keys;         /* NULL: no key needed */
    int health_open;           /* with keys: GET /health needs none */
} mm_http_params;

typedef struct mm_http_server mm_http_server;

/* Binds the port (a taken port is an error naming http_listen) and starts serving. */
mm_status mm_http_start(const mm_http_params *p, mm_http_server **out);
int mm_http_port(const mm_http_server *s);
/* Call after the scheduler thread sent the HTTP door its MM_REPLY_STOP: joins the reply
 * thread, fails what still waits, stops the daemon. */
void mm_http_stop(mm_http_server *s);

#endif
