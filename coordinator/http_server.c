/* See http_server.h. Threads: libmicrohttpd's listener and one thread per connection
 * (which parses, submits and waits), and our reply thread, which takes the scheduler's
 * replies off the inproc socket and queues each on its call. The call table and the
 * queues live behind one mutex; the PUSH socket to the scheduler behind another (a
 * ZeroMQ socket is not thread-safe). A waiting connection thread wakes every
 * WAIT_SLICE_MS to see whether its client hung up (POLLRDHUP); then its requests are
 * cancelled, as a gRPC cancellation does. */
#include "http_server.h"

#include <grpc/status.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "access_log.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/tcp_listen.h"
#include "http_auth.h"
#include "openai_request.h"
#include "openai_response.h"

#define N_BUCKETS 256
#define WAIT_SLICE_MS 50
#define THREAD_STACK_BYTES (1u << 20)
#define IDLE_CONNECTION_S 300

typedef struct reply_node {
    mm_reply *r;
    struct reply_node *next;
} reply_node;

/* One request in the scheduler; an images request with n > 1 has n of them. */
typedef struct http_call {
    uint64_t id;
    struct http_call *next_in_bucket;
    reply_node *head, *tail;  /* replies not yet taken by the connection thread */
    pthread_cond_t cv;
    int done;                 /* the FINAL or ERROR reply has arrived */
} http_call;

struct mm_http_server {
    mm_http_params p;
    struct MHD_Daemon *daemon;
    int port;
    void *to_sched;           /* PUSH, behind send_mu */
    pthread_mutex_t send_mu;
    void *from_sched;         /* PULL, the reply thread's */
    pthread_t reply_thread;
    int reply_started;
    pthread_mutex_t mu;       /* buckets, every call's queue, stopping */
    http_call *buckets[N_BUCKETS];
    uint64_t next_id;
    int stopping;             /* the scheduler thread has ended */
};

typedef enum { ROUTE_CHAT = MM_OAI_CHAT, ROUTE_COMPLETION = MM_OAI_COMPLETION, ROUTE_IMAGES = MM_OAI_IMAGES } route;

/* One HTTP request, from its first header to its last byte (libmicrohttpd's req_cls). */
typedef struct {
    mm_http_server *s;
    mm_oai_kind kind;
    char *body;               /* [len] */
    size_t len, cap;
    int too_large;
    int fd;                   /* the client's socket, watched while waiting */
    double t_arrival_ms;
    int grpc_code;            /* how it ended, for the metrics (-1: not counted yet) */
    const char *path;         /* the route, for the access log */
    char peer[64];            /* the client's address */
    char rid[129];            /* the request's id */
    int prompt_tokens, completion_tokens, images; /* from the final reply */
    double ttft_ms;
    mm_oai_request *req;
    http_call *calls[MM_OAI_MAX_IMAGES_N];
    int n_calls;
    /* streaming */
    mm_reply *first;          /* the reply that told us to start streaming */
    mm_oai_head head;
    char id[160];
    char *out;                /* [out_len] SSE bytes; out[out_pos, out_len) not yet sent */
    size_t out_len, out_pos, out_cap;
    int finished;
    char key_name[MM_API_KEY_NAME_MAX + 1]; /* the API key's name, "" without keys */
    int64_t key_tokens;       /* held of the key's limits (all its requests) */
    int key_requests;
} exchange;

/* ---------------------------------------------------------------- calls (under mu) */

static http_call *call_find(mm_http_server *s, uint64_t id) {
    for (http_call *c = s->buckets[id % N_BUCKETS]; c; c = c->next_in_bucket)
        if (c->id == id) return c;
    return NULL;
}

static http_call *call_new(mm_http_server *s) {
    http_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_cond_init(&c->cv, NULL);
    pthread_mutex_lock(&s->mu);
    c->id = MM_CALL_ID_HTTP | ++s->next_id;
    http_call **b = &s->buckets[c->id % N_BUCKETS];
    c->next_in_bucket = *b;
    *b = c;
    pthread_mutex_unlock(&s->mu);
    return c;
}

static void to_sched(mm_http_server *s, mm_msg_type type, uint64_t id, mm_request *req) {
    mm_msg m = {type, id, req};
    pthread_mutex_lock(&s->send_mu);
    int n = zmq_send(s->to_sched, &m, sizeof m, 0);
    pthread_mutex_unlock(&s->send_mu);
    if (n != (int)sizeof m) {
        LOG_ERROR("http: zmq_send to the scheduler: %s", zmq_strerror(zmq_errno()));
        mm_request_free(req);
    }
}

/* Unlinks c, cancels it in the scheduler unless it has finished, frees what is queued. */
static void call_end(mm_http_server *s, http_call *c) {
    pthread_mutex_lock(&s->mu);
    for (http_call **p = &s->buckets[c->id % N_BUCKETS]; *p; p = &(*p)->next_in_bucket)
        if (*p == c) {
            *p = c->next_in_bucket;
            break;
        }
    int done = c->done;
    pthread_mutex_unlock(&s->mu);
    if (!done) to_sched(s, MM_MSG_CANCEL, c->id, NULL);
    while (c->head) {
        reply_node *n = c->head;
        c->head = n->next;
        mm_reply_free(n->r);
        free(n);
    }
    pthread_cond_destroy(&c->cv);
    free(c);
}

static int peer_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static mm_reply *error_reply(uint64_t id, int code, const char *msg) {
    mm_reply *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->type = MM_REPLY_ERROR, r->call_id = id, r->code = code;
    snprintf(r->message, sizeof r->message, "%s", msg);
    return r;
}

/* The next reply of c; NULL when the client hung up (or memory ran out). */
static mm_reply *wait_reply(mm_http_server *s, http_call *c, int fd) {
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (c->head) {
            reply_node *n = c->head;
            c->head = n->next;
            if (!c->head) c->tail = NULL;
            pthread_mutex_unlock(&s->mu);
            mm_reply *r = n->r;
            free(n);
            return r;
        }
        if (c->done || s->stopping) { /* the scheduler thread has gone without a word for c */
            c->done = 1;
            pthread_mutex_unlock(&s->mu);
            return error_reply(c->id, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += WAIT_SLICE_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        if (pthread_cond_timedwait(&c->cv, &s->mu, &until) != 0 && !c->head) {
            pthread_mutex_unlock(&s->mu);
            if (peer_gone(fd)) return NULL;
            pthread_mutex_lock(&s->mu);
        }
    }
}

static void *reply_main(void *arg) {
    mm_http_server *s = arg;
    for (;;) {
        mm_reply *r = NULL;
        int n = zmq_recv(s->from_sched, &r, sizeof r, 0);
        if (n < 0) {
            if (zmq_errno() == EINTR) continue;
            LOG_ERROR("http reply thread: zmq_recv: %s", zmq_strerror(zmq_errno()));
            r = NULL;
        } else if (n != (int)sizeof r || !r) {
            continue;
        }
        if (!r || r->type == MM_REPLY_STOP) {
            mm_reply_free(r);
            pthread_mutex_lock(&s->mu);
            s->stopping = 1;
            for (int b = 0; b < N_BUCKETS; b++)
                for (http_call *c = s->buckets[b]; c; c = c->next_in_bucket) pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&s->mu);
            return NULL;
        }
        reply_node *node = malloc(sizeof *node);
        pthread_mutex_lock(&s->mu);
        http_call *c = call_find(s, r->call_id);
        if (c && node) {
            node->r = r, node->next = NULL;
            if (c->tail) c->tail->next = node;
            else c->head = node;
            c->tail = node;
            if (r->type == MM_REPLY_FINAL || r->type == MM_REPLY_ERROR) c->done = 1;
            pthread_cond_signal(&c->cv);
            r = NULL, node = NULL;
        }
        pthread_mutex_unlock(&s->mu);
        free(node);
        mm_reply_free(r); /* a call that is gone: its client hung up */
    }
}

/* ---------------------------------------------------------------- responses */

static enum MHD_Result respond_json(struct MHD_Connection *conn, unsigned status, json_t *j) {
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (ok == MHD_YES) ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result respond_error(struct MHD_Connection *conn, const mm_oai_error *e) {
    return respond_json(conn, (unsigned)e->http_status, mm_oai_error_json(e));
}

static enum MHD_Result respond_error_msg(struct MHD_Connection *conn, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum MHD_Result respond_error_msg(struct MHD_Connection *conn, int status, const char *type, const char *fmt, ...) {
    mm_oai_error e = {.http_status = status, .type = type};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    return respond_error(conn, &e);
}

static int grpc_code_of_http(int status) {
    switch (status) {
    case 404: return GRPC_STATUS_NOT_FOUND;
    case 413: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case 500: return GRPC_STATUS_INTERNAL;
    default: return GRPC_STATUS_INVALID_ARGUMENT;
    }
}

/* ---------------------------------------------------------------- GET routes */

static enum MHD_Result answer_get(mm_http_server *s, struct MHD_Connection *conn, const char *url) {
    if (!strcmp(url, "/health")) {
        int ok = atomic_load(s->p.serving) == 1;
        return respond_json(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                            json_pack("{s:s}", "status", ok ? "SERVING" : "NOT_SERVING"));
    }
    if (!strcmp(url, "/v1/models"))
        return respond_json(conn, MHD_HTTP_OK, mm_oai_models_json(s->p.model_name, (long long)time(NULL),
                                                                  s->p.limits.max_context));
    if (!strncmp(url, "/v1/models/", 11)) {
        if (strcmp(url + 11, s->p.model_name))
            return respond_error_msg(conn, 404, "not_found_error", "The model '%.200s' does not exist", url + 11);
        json_t *list = mm_oai_models_json(s->p.model_name, (long long)time(NULL), s->p.limits.max_context);
        json_t *m = json_incref(json_array_get(json_object_get(list, "data"), 0));
        json_decref(list);
        return respond_json(conn, MHD_HTTP_OK, m);
    }
    return respond_error_msg(conn, 404, "not_found_error", "no route GET %.200s", url);
}

/* ---------------------------------------------------------------- POST: submit */

/* X-Request-Id when the client sent a usable one (printable, at most 128 bytes), else ""
 * (validate.c then makes one). */
static void request_id(struct MHD_Connection *conn, char *out, size_t cap) {
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    int ok = h && h[0] && strlen(h) < cap && strlen(h) <= 128;
    for (const char *p = h; ok && *p; p++) ok = *p > 0x20 && *p < 0x7f;
    snprintf(out, cap, "%s", ok ? h : "");
}

/* Builds and submits the request(s) of x->req; on a refusal fills err. */
static int submit(exchange *x, struct MHD_Connection *conn, mm_oai_error *err) {
    mm_http_server *s = x->s;
    mm_oai_request *q = x->req;
    char rid[129];
    request_id(conn, rid, sizeof rid);
    q->g.request_id = rid;
    double deadline = q->timeout_s > 0 ? x->t_arrival_ms + q->timeout_s * 1e3 : 0;
    for (int k = 0; k < q->n; k++) {
        if (x->kind == MM_OAI_IMAGES) q->image.seed = q->image_seed + (uint64_t)k;
        mm_request *r;
        char msg[512];
        int code = mm_request_build(&q->g, &s->p.limits, &r, msg, sizeof msg);
        int64_t tokens = code ? 0 : (int64_t)r->n_prompt + r->max_new_tokens;
        if (!code && s->p.keys && x->key_name[0]) {
            if (!mm_api_keys_acquire(s->p.keys, x->key_name, tokens, msg, sizeof msg)) {
                mm_request_free(r);
                code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            } else {
                x->key_tokens += tokens, x->key_requests++;
            }
        }
        if (code) {
            mm_oai_error_from_grpc(code, msg, err);
            x->grpc_code = code;
            return -1;
        }
        http_call *c = call_new(s);
        if (!c) {
            mm_request_free(r);
            mm_oai_error_from_grpc(GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", err);
            return -1;
        }
        x->calls[x->n_calls++] = c;
        if (k == 0) { /* the client's id or a server-made one */
            snprintf(rid, sizeof rid, "%s", r->request_id);
            snprintf(x->rid, sizeof x->rid, "%s", r->request_id);
        }
        q->g.request_id = rid;
        r->call_id = c->id;
        r->stream = q->stream;
        r->t_arrival_ms = x->t_arrival_ms;
        r->deadline_ms = deadline;
        to_sched(s, MM_MSG_SUBMIT, c->id, r);
    }
    snprintf(x->id, sizeof x->id, "%s%s", x->kind == MM_OAI_CHAT ? "chatcmpl-" : x->kind == MM_OAI_IMAGES ? "img-" : "cmpl-",
             rid);
    x->head = (mm_oai_head){x->id, q->model[0] ? q->model : s->p.model_name, (long long)time(NULL)};
    q->g.request_id = NULL;
    return 0;
}

/* ---------------------------------------------------------------- POST: whole answers */

/* Waits for every call of x; the result, or err (a refusal, or the client gone: -1). */
static int collect(exchange *x, mm_oai_result *res, mm_reply **final, mm_oai_error *err) {
    for (int k = 0; k < x->n_calls; k++) {
        for (;;) {
            mm_reply *r = wait_reply(x->s, x->calls[k], x->fd);
            if (!r) {
                x->grpc_code = GRPC_STATUS_CANCELLED;
                return -1;
            }
            if (r->type == MM_REPLY_ERROR) {
                mm_oai_error_from_grpc(r->code, r->message, err);
                x->grpc_code = r->code;
                mm_reply_free(r);
                return 1;
            }
            if (r->type == MM_REPLY_FINAL) {
                if (*final) { /* images: usage adds up over the n requests */
                    (*final)->prompt_tokens += r->prompt_tokens, (*final)->completion_tokens += r->completion_tokens,
                    (*final)->cached_tokens += r->cached_tokens;
                    mm_reply_free(r);
                } else {
                    *final = r;
                }
                break;
            }
            int rc = mm_oai_result_add(res, r);
            mm_reply_free(r);
            if (rc) {
                mm_oai_error_from_grpc(GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", err);
                x->grpc_code = GRPC_STATUS_RESOURCE_EXHAUSTED;
                return 1;
            }
        }
    }
    x->grpc_code = GRPC_STATUS_OK;
    return 0;
}

static enum MHD_Result answer_whole(exchange *x, struct MHD_Connection *conn) {
    mm_oai_result res;
    mm_oai_result_init(&res);
    mm_reply *final = NULL;
    mm_oai_error err = {0};
    int rc = collect(x, &res, &final, &err);
    enum MHD_Result out;
    if (rc < 0) {
        out = MHD_NO; /* the client has gone: close */
    } else if (rc > 0) {
        out = respond_error(conn, &err);
    } else if (x->kind == MM_OAI_IMAGES) {
        if ((int)json_array_size(res.images) < x->req->n) {
            x->grpc_code = GRPC_STATUS_UNAVAILABLE;
            out = respond_error_msg(conn, 503, "service_unavailable", "no image decoder served this request");
        } else {
            out = respond_json(conn, MHD_HTTP_OK,
                               json_pack("{s:I, s:O, s:o}", "created", (json_int_t)x->head.created, "data", res.images,
                                         "usage", mm_oai_usage(final)));
        }
    } else {
        out = respond_json(conn, MHD_HTTP_OK, mm_oai_completion_json(x->kind, &x->head, &res, final,
                                                                     x->req->return_token_ids));
    }
    if (final)
        x->prompt_tokens = final->prompt_tokens, x->completion_tokens = final->completion_tokens,
        x->images = res.n_images, x->ttft_ms = final->ttft_ms;
    mm_reply_free(final);
    mm_oai_result_free(&res);
    return out;
}

/* ---------------------------------------------------------------- POST: streams */

static int out_append(exchange *x, const char *data, size_t n) {
    if (x->out_len + n > x->out_cap) {
        size_t cap = x->out_cap ? x->out_cap : 4096;
        while (cap < x->out_len + n) cap *= 2;
        char *o = realloc(x->out, cap);
        if (!o) return -1;
        x->out = o, x->out_cap = cap;
    }
    memcpy(x->out + x->out_len, data, n);
    x->out_len += n;
    return 0;
}

/* "data: JSON\n\n" (takes j). */
static int sse_event(exchange *x, json_t *j) {
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) return -1;
    int rc = out_append(x, "data: ", 6) || out_append(x, text, strlen(text)) || out_append(x, "\n\n", 2) ? -1 : 0;
    free(text);
    return rc;
}

static json_t *with_ids(json_t *chunk, const mm_reply *r) {
    json_t *ids = json_array();
    for (int i = 0; ids && i < r->n_ids; i++) json_array_append_new(ids, json_integer(r->ids[i]));
    json_object_set_new(json_array_get(json_object_get(chunk, "choices"), 0), "token_ids", ids);
    return chunk;
}

/* One reply as SSE events; the FINAL and ERROR replies end the stream with [DONE]. */
static int sse_reply(exchange *x, const mm_reply *r) {
    const mm_oai_head *h = &x->head;
    int chat = x->kind == MM_OAI_CHAT;
    switch (r->type) {
    case MM_REPLY_DELTA: {
        if (!r->text_len && !x->req->return_token_ids) return 0;
        json_t *chunk = chat ? mm_oai_chunk_json(x->kind, h, json_pack("{s:s%}", "content", r->text, r->text_len), NULL, NULL)
                             : mm_oai_chunk_json(x->kind, h, NULL, r->text, NULL);
        return sse_event(x, x->req->return_token_ids && chunk ? with_ids(chunk, r) : chunk);
    }
    case MM_REPLY_IMAGE_READY: {
        if (!chat || !r->png) return 0;
        json_t *part = mm_oai_image_part(r->png, r->n_png);
        return sse_event(x, part ? mm_oai_chunk_json(x->kind, h, json_pack("{s:[o]}", "content", part), NULL, NULL) : NULL);
    }
    case MM_REPLY_FINAL: {
        x->finished = 1;
        x->prompt_tokens = r->prompt_tokens, x->completion_tokens = r->completion_tokens, x->images = r->images;
        x->ttft_ms = r->ttft_ms;
        const char *fr = mm_oai_finish_reason(r->finish_reason);
        if (sse_event(x, chat ? mm_oai_chunk_json(x->kind, h, json_object(), NULL, fr)
                              : mm_oai_chunk_json(x->kind, h, NULL, "", fr)))
            return -1;
        if (x->req->include_usage && sse_event(x, mm_oai_usage_chunk_json(x->kind, h, r))) return -1;
        x->grpc_code = GRPC_STATUS_OK;
        return out_append(x, "data: [DONE]\n\n", 14);
    }
    case MM_REPLY_ERROR: {
        x->finished = 1;
        x->grpc_code = r->code;
        mm_oai_error e;
        mm_oai_error_from_grpc(r->code, r->message, &e);
        if (sse_event(x, mm_oai_error_json(&e))) return -1;
        return out_append(x, "data: [DONE]\n\n", 14);
    }
    default: return 0;
    }
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    exchange *x = cls;
    while (x->out_pos == x->out_len) {
        if (x->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        x->out_pos = x->out_len = 0;
        mm_reply *r = x->first ? x->first : wait_reply(x->s, x->calls[0], x->fd);
        x->first = NULL;
        if (!r) {
            x->grpc_code = GRPC_STATUS_CANCELLED;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        int rc = sse_reply(x, r);
        mm_reply_free(r);
        if (rc) {
            x->grpc_code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    size_t n = x->out_len - x->out_pos < max ? x->out_len - x->out_pos : max;
    memcpy(buf, x->out + x->out_pos, n);
    x->out_pos += n;
    return (ssize_t)n;
}

/* Waits for the first reply, so that a refusal (queue full, pool down) still gets its
 * HTTP status; then streams. */
static enum MHD_Result answer_stream(exchange *x, struct MHD_Connection *conn) {
    mm_reply *r = wait_reply(x->s, x->calls[0], x->fd);
    if (!r) {
        x->grpc_code = GRPC_STATUS_CANCELLED;
        return MHD_NO;
    }
    if (r->type == MM_REPLY_ERROR) {
        mm_oai_error e;
        mm_oai_error_from_grpc(r->code, r->message, &e);
        x->grpc_code = r->code;
        mm_reply_free(r);
        return respond_error(conn, &e);
    }
    x->first = r;
    if (x->kind == MM_OAI_CHAT &&
        sse_event(x, mm_oai_chunk_json(x->kind, &x->head, json_pack("{s:s, s:s}", "role", "assistant", "content", ""),
                                       NULL, NULL)))
        return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_read, x, NULL);
    if (!resp) return MHD_NO;
    enum MHD_Result ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    if (ok == MHD_YES) ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    if (ok == MHD_YES) ok = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result answer_post(exchange *x, struct MHD_Connection *conn) {
    mm_http_server *s = x->s;
    if (x->too_large)
        return respond_error_msg(conn, 413, "request_too_large", "the body is larger than %zu bytes (http_max_body_mb)",
                                 s->p.max_body_bytes);
    mm_oai_limits lim = {s->p.model_name, s->p.image_side, s->p.limits.n_image_tokens};
    mm_oai_error err;
    if (mm_oai_request_parse(x->kind, x->body ? x->body : "", x->len, &lim, &x->req, &err)) {
        x->grpc_code = grpc_code_of_http(err.http_status);
        return respond_error(conn, &err);
    }
    free(x->body), x->body = NULL;
    if (submit(x, conn, &err)) return respond_error(conn, &err);
    return x->req->stream ? answer_stream(x, conn) : answer_whole(x, conn);
}

/* ---------------------------------------------------------------- libmicrohttpd glue */

static const struct {
    const char *path;
    route r;
} POST_ROUTES[] = {
    {"/v1/chat/completions", ROUTE_CHAT},
    {"/v1/completions", ROUTE_COMPLETION},
    {"/v1/images/generations", ROUTE_IMAGES},
};

/* "ip:port" of the client. */
static void peer_name(struct MHD_Connection *conn, char *out, size_t cap) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char host[64], port[16];
    out[0] = 0;
    if (ci && ci->client_addr &&
        getnameinfo(ci->client_addr, ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                                               : sizeof(struct sockaddr_in),
                    host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) == 0)
        if (snprintf(out, cap, "%s:%s", host, port) >= (int)cap) out[0] = 0;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls) {
    mm_http_server *s = cls;
    exchange *x = *req_cls;
    if (!x) {
        char key_name[MM_API_KEY_NAME_MAX + 1] = "";
        int open = s->p.health_open && !strcmp(url, "/health");
        if (!mm_http_client_cert_ok(conn, s->p.tls))
            return respond_error_msg(conn, 401, "authentication_error", "a client certificate signed by the "
                                     "service's tls_client_ca is required");
        if (!open && !mm_http_key_ok(conn, s->p.keys, key_name)) /* nothing more: no oracle for guessing */
            return respond_error_msg(conn, 401, "authentication_error", "missing or invalid API key "
                                     "(Authorization: Bearer KEY)");
        if (!strcmp(method, MHD_HTTP_METHOD_GET)) return answer_get(s, conn, url);
        int found = -1;
        for (size_t i = 0; i < sizeof POST_ROUTES / sizeof *POST_ROUTES; i++)
            if (!strcmp(url, POST_ROUTES[i].path)) found = (int)i;
        if (found < 0) return respond_error_msg(conn, 404, "not_found_error", "no route %.16s %.200s", method, url);
        if (strcmp(method, MHD_HTTP_METHOD_POST))
            return respond_error_msg(conn, 405, "invalid_request_error", "%.200s takes POST", url);
        x = calloc(1, sizeof *x);
        if (!x) return MHD_NO;
        snprintf(x->key_name, sizeof x->key_name, "%s", key_name);
        x->s = s, x->kind = (mm_oai_kind)POST_ROUTES[found].r, x->t_arrival_ms = mm_now_ms(), x->grpc_code = -1, x->fd = -1;
        x->path = POST_ROUTES[found].path;
        peer_name(conn, x->peer, sizeof x->peer);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) x->fd = ci->connect_fd;
        int one = 1; /* stream chunks leave at once: Nagle + the client's delayed ACK held each ~40 ms */
        if (x->fd >= 0) setsockopt(x->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        *req_cls = x;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->p.max_body_bytes) { /* refused before reading it */
            x->too_large = 1;
            x->grpc_code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            return answer_post(x, conn);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (x->too_large || x->len + n > s->p.max_body_bytes) {
            x->too_large = 1;
            return MHD_YES; /* the rest is read and dropped; 413 once it has all arrived */
        }
        if (x->len + n > x->cap) {
            size_t cap = x->cap ? x->cap : 16384;
            while (cap < x->len + n) cap *= 2;
            char *b = realloc(x->body, cap);
            if (!b) return MHD_NO;
            x->body = b, x->cap = cap;
        }
        memcpy(x->body + x->len, upload_data, n);
        x->len += n;
        return MHD_YES;
    }
    if (x->req) return MHD_YES; /* answered already (e.g. an early 413) */
    if (x->too_large) x->grpc_code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    return answer_post(x, conn);
}

static void completed(void *cls, struct MHD_Connection *conn, void **req_cls, enum MHD_RequestTerminationCode toe) {
    mm_http_server *s = cls;
    exchange *x = *req_cls;
    if (!x) return;
    *req_cls = NULL;
    for (int k = 0; k < x->n_calls; k++) call_end(s, x->calls[k]); /* cancels what has not finished */
    if (x->grpc_code < 0 || (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && x->grpc_code == GRPC_STATUS_OK && !x->finished &&
                             x->req && x->req->stream))
        x->grpc_code = GRPC_STATUS_CANCELLED;
    mm_metrics_inc(s->p.metrics, MM_METRIC_REQUESTS_TOTAL, x->grpc_code);
    mm_metrics_observe(s->p.metrics, MM_METRIC_REQUEST_DURATION_SECONDS, 0, (mm_now_ms() - x->t_arrival_ms) * 1e-3);
    mm_access_entry a = {"http", x->peer, x->path, x->rid, x->grpc_code, x->prompt_tokens, x->completion_tokens, x->images,
                         x->ttft_ms, mm_now_ms() - x->t_arrival_ms};
    mm_access_log(&a);
    if (x->key_requests) mm_api_keys_release(s->p.keys, x->key_name, x->key_requests, x->key_tokens);
    mm_reply_free(x->first);
    mm_oai_request_free(x->req);
    free(x->body);
    free(x->out);
    free(x);
}

mm_status mm_http_start(const mm_http_params *p, mm_http_server **out) {
    *out = NULL;
    mm_http_server *s = calloc(1, sizeof *s);
    CHECK(CHECK_ALLOC(s));
    s->p = *p;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->send_mu, NULL);
    int fd = -1;
    mm_status rc = mm_tcp_listen("http_listen", p->listen, &fd);
    if (rc != MM_OK) goto fail;
    s->port = mm_tcp_bound_port(fd);
    s->to_sched = zmq_socket(p->zmq_ctx, ZMQ_PUSH);
    s->from_sched = zmq_socket(p->zmq_ctx, ZMQ_PULL);
    if (!s->to_sched || !s->from_sched || zmq_connect(s->to_sched, MM_ENDPOINT_REQUESTS) ||
        zmq_connect(s->from_sched, MM_ENDPOINT_HTTP_REPLIES)) {
        rc = MM_ERROR(MM_ERR_IO, "http: inproc sockets: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    struct MHD_OptionItem tls[4];
    unsigned tls_flag = mm_http_tls_options(p->tls, tls);
    s->daemon = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | tls_flag, 0, NULL, NULL, answer, s,
        MHD_OPTION_ARRAY, tls,
        MHD_OPTION_EXTERNAL_LOGGER, mm_mhd_log, (void *)"http", MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT,
        p->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_CONNECTION_S, MHD_OPTION_THREAD_STACK_SIZE,
        (size_t)THREAD_STACK_BYTES, MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_END);
    if (!s->daemon) {
        rc = MM_ERROR(MM_ERR_IO, "http on %s: libmicrohttpd did not start (see the log)", p->listen);
        goto fail;
    }
    fd = -1; /* the daemon owns it */
    if (pthread_create(&s->reply_thread, NULL, reply_main, s) != 0) {
        rc = MM_ERROR(MM_ERR_INTERNAL, "http: cannot start the reply thread");
        MHD_stop_daemon(s->daemon);
        goto fail;
    }
    s->reply_started = 1;
    LOG_INFO("OpenAI-compatible HTTP API on %s://%s/v1 (model \"%s\")", tls_flag ? "https" : "http", p->listen,
             p->model_name);
    *out = s;
    return MM_OK;
fail:
    if (fd >= 0) close(fd);
    if (s->to_sched) zmq_close(s->to_sched);
    if (s->from_sched) zmq_close(s->from_sched);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->send_mu);
    free(s);
    return rc;
}

int mm_http_port(const mm_http_server *s) { return s->port; }

void mm_http_stop(mm_http_server *s) {
    if (!s) return;
    if (s->reply_started) pthread_join(s->reply_thread, NULL); /* it ends on the scheduler's MM_REPLY_STOP */
    MHD_stop_daemon(s->daemon); /* waits for the connection threads, which see s->stopping */
    zmq_close(s->to_sched);
    zmq_close(s->from_sched);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->send_mu);
    free(s);
}
