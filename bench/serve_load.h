/* The client side of bench/serve: the three request kinds it sends (text chat,
 * understanding = one image + text, generation = an image asked for), each streamed
 * through GenerateStream so first-token and inter-token times are seen, and a runner
 * that plays a list of requests at their arrival times with at most `concurrency` in
 * flight (one thread per slot, all over one mm_client channel). */
#ifndef MM_BENCH_SERVE_LOAD_H
#define MM_BENCH_SERVE_LOAD_H

#include "bench/serve_images.h"
#include "proto/metamorph.pb-c.h"
#include "tools/mm_client.h"

/* MetaMorph emits an image as 64 visual tokens: a generation request needs that many. */
#define SERVE_IMAGE_TOKENS 64

typedef enum { SERVE_TEXT, SERVE_UNDERSTAND, SERVE_GENERATE, SERVE_N_KINDS } serve_kind;
extern const char *const serve_kind_name[SERVE_N_KINDS]; /* "text", "understand", "generate" */

typedef struct {
    /* the request (set by the caller) */
    serve_kind kind;
    double arrival;            /* s after the run starts */
    int in_len, out_len;       /* prompt words, max_new_tokens */
    const serve_image *image;  /* SERVE_UNDERSTAND: sent before the text */
    int steps;                 /* SERVE_GENERATE: diffusion steps, 0 = the server's */
    const char *lead;          /* text sent first in the user message (a shared instruction), or NULL */
    const char *const *history; /* [n_history] earlier turns, user and assistant alternately (gRPC only) */
    int n_history;
    unsigned random_words;     /* 0: the prompt's words follow the request index; else drawn from this seed */
    /* what came back (set by serve_load_run) */
    int code;                  /* gRPC status */
    double start, first, end;  /* monotonic s: sent, first token, last reply */
    double *itl;               /* gaps between token deltas, ms */
    int n_itl, cap_itl;
    int n_out, n_in, n_images; /* tokens out, prompt tokens, PNGs received */
    double last;
} serve_req;

/* The words of request i's prompt: n_words of them, following i (random_words 0) or
 * drawn from the seed random_words and i. malloc'd; NULL without memory. */
char *serve_prompt_words(int n_words, unsigned random_words, int i);
/* Send every request through the OpenAI-compatible HTTP door at hostport ("host:port")
 * instead of gRPC (bench/serve --http). */
void serve_load_use_http(const char *hostport);
/* Seconds on the monotonic clock. */
double serve_now(void);
/* Plays r[0..n) over cl, at most concurrency at once, each call with a deadline of
 * timeout_s. Returns the wall time (s) from the start to the last reply, or -1 when it
 * could not run (message on stderr). */
double serve_load_run(mm_client *cl, serve_req *r, int n, int concurrency, double timeout_s);
/* Did r complete: status OK, a token out, and for SERVE_GENERATE a PNG back? */
int serve_req_ok(const serve_req *r);
/* Frees what serve_load_run allocated in r[0..n). */
void serve_reqs_free(serve_req *r, int n);
/* GetModelInfo (free with metamorph__v1__model_info__free_unpacked); NULL on error. */
Metamorph__V1__ModelInfo *serve_model_info(mm_client *cl);

#endif
