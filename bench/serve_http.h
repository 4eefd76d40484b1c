/* bench/serve through the OpenAI-compatible HTTP door (--http): the same request a
 * gRPC slot sends (serve_load.c), as a streamed POST /v1/chat/completions (libcurl),
 * with the same timings taken from the server-sent events. */
#ifndef MM_BENCH_SERVE_HTTP_H
#define MM_BENCH_SERVE_HTTP_H

#include "bench/serve_load.h"

/* Sends r (prompt text built by the caller) to http://hostport and fills r's timings and
 * counts; returns 0 on a complete stream, else the HTTP status (or -1). */
int serve_http_call(const char *hostport, serve_req *r, const char *prompt, int index, double timeout_s);

#endif
