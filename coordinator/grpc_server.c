/* See grpc_server.h. Rules of the C core followed here: after each accepted call a new
 * request_call is posted at once; RECV_CLOSE_ON_SERVER is its own batch (it reports
 * cancellation and deadlines); SEND_STATUS_FROM_SERVER is never in a batch with a
 * receive; a call has at most one send batch outstanding (later messages queue); a
 * call is freed only when its close has completed and no batch is outstanding. */
#include "grpc_server.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "access_log.h"
#include "api_keys.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/tcp_listen.h"
#include "grpc_reflection.h"
#include "proto/health.pb-c.h"

#define N_BUCKETS 1024
/* What one client can make the HTTP/2 transport hold (issue 21): a header list of at
 * most 16 KiB per request, 256 streams per connection, and all connections together
 * within one memory quota. */
#define HTTP2_MAX_HEADER_BYTES 16384
#define HTTP2_MAX_STREAMS 256
#define HTTP2_MEMORY_QUOTA_MB 256

typedef enum { M_UNKNOWN = 0, M_GENERATE, M_STREAM, M_INFO, M_HEALTH, M_REFLECTION } method_id;

static const struct {
    const char *path;
    method_id id;
} METHODS[] = {
    {"/metamorph.v1.MetaMorph/Generate", M_GENERATE},
    {"/metamorph.v1.MetaMorph/GenerateStream", M_STREAM},
    {"/metamorph.v1.MetaMorph/GetModelInfo", M_INFO},
    {"/grpc.health.v1.Health/Check", M_HEALTH},
    {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", M_REFLECTION},
    {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", M_REFLECTION}, /* same messages */
};

typedef enum { TAG_NEW_CALL = 1, TAG_RECV, TAG_CLOSE, TAG_SEND, TAG_SHUTDOWN } tag_kind;

typedef struct call_ctx call_ctx;
typedef struct {
    tag_kind kind;
    call_ctx *c;
} op_tag;

typedef struct out_msg {
    struct out_msg *next;
    grpc_byte_buffer *bb;     /* may be NULL (status only) */
    int final;
    grpc_status_code code;
    char *details;
} out_msg;

struct call_ctx {
    uint64_t id;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    method_id method;
    double t_arrival_ms, deadline_ms;
    char peer[64];            /* the client's address, for the access log */
    char request_id[129];     /* Generate*: the request's id (the client's or a server-made one) */
    char key_name[MM_API_KEY_NAME_MAX + 1]; /* the API key's name, "" without keys */
    int64_t key_tokens;       /* what the request holds of its key's limits; -1: nothing */
    int prompt_tokens, completion_tokens, n_images_done; /* from the final reply, for the access log */
    double ttft_ms;
    grpc_byte_buffer *recv_bb;
    int close_cancelled;
    int outstanding;          /* batches started and not completed */
    int close_done, initial_md_sent, status_started, submitted, answered;
    out_msg *head, *tail;
    int sending;
    grpc_slice status_details;
    /* unary Generate: deltas accumulate here */
    char *text;
    size_t text_len, text_cap;
    int32_t *ids;
    size_t n_ids, cap_ids;
    Metamorph__V1__GeneratedImage **images; /* [n_images] (visual_tokens and png.data malloc'd) */
    size_t n_images;
    op_tag t_new, t_recv, t_close, t_send;
    call_ctx *next_in_bucket;
};

struct mm_grpc_server {
    mm_grpc_params p;
    grpc_server *server;
    grpc_completion_queue *cq;
    pthread_t cq_thread, reply_thread;
    int cq_started, reply_started;
    void *to_sched;           /* PUSH, used by the cq thread only */
    void *from_sched;         /* PULL, used by the reply thread only */
    pthread_mutex_t mu;       /* the call table and every grpc_call_start_batch */
    call_ctx *buckets[N_BUCKETS];
    uint64_t next_id;
    call_ctx *pending;        /* the posted request_call */
    op_tag t_shutdown;
    mm_h2_guard *guard;       /* the port's owner with p.guard, else NULL */
};

/* ---------------------------------------------------------------- call table */

static void table_add(mm_grpc_server *s, call_ctx *c) {
    call_ctx **b = &s->buckets[c->id % N_BUCKETS];
    c->next_in_bucket = *b;
    *b = c;
}

static call_ctx *table_find(mm_grpc_server *s, uint64_t id) {
    for (call_ctx *c = s->buckets[id % N_BUCKETS]; c; c = c->next_in_bucket)
        if (c->id == id) return c;
    return NULL;
}

static void table_remove(mm_grpc_server *s, call_ctx *c) {
    for (call_ctx **p = &s->buckets[c->id % N_BUCKETS]; *p; p = &(*p)->next_in_bucket)
        if (*p == c) {
            *p = c->next_in_bucket;
            return;
        }
}

static call_ctx *ctx_new(mm_grpc_server *s) {
    call_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->id = ++s->next_id;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    c->key_tokens = -1;
    c->t_new = (op_tag){TAG_NEW_CALL, c};
    c->t_recv = (op_tag){TAG_RECV, c};
    c->t_close = (op_tag){TAG_CLOSE, c};
    c->t_send = (op_tag){TAG_SEND, c};
    c->status_details = grpc_empty_slice();
    return c;
}

static void ctx_destroy(call_ctx *c) {
    while (c->head) {
        out_msg *m = c->head;
        c->head = m->next;
        if (m->bb) grpc_byte_buffer_destroy(m->bb);
        free(m->details);
        free(m);
    }
    if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
    grpc_slice_unref(c->status_details);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->call) grpc_call_unref(c->call);
    free(c->text);
    free(c->ids);
    for (size_t i = 0; i < c->n_images; i++) free(c->images[i]->visual_tokens), free(c->images[i]->png.data), free(c->images[i]);
    free(c->images);
    free(c);
}

/* ---------------------------------------------------------------- sending (under mu) */

static grpc_byte_buffer *bytes_to_bb(const void *data, size_t len) {
    grpc_slice sl = grpc_slice_from_copied_buffer(data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

static void pump(mm_grpc_server *s, call_ctx *c) {
    if (c->sending || !c->head || c->status_started || c->close_done) return;
    out_msg *m = c->head;
    c->head = m->next;
    if (!c->head) c->tail = NULL;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->initial_md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
        c->initial_md_sent = 1;
    }
    if (m->bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = m->bb;
        n++;
    }
    if (m->final) {
        grpc_slice_unref(c->status_details);
        c->status_details = grpc_slice_from_copied_string(m->details ? m->details : "");
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = m->code;
        ops[n].data.send_status_from_server.status_details = m->code ? &c->status_details : NULL;
        n++;
        c->status_started = 1;
    }
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL);
    if (m->bb) grpc_byte_buffer_destroy(m->bb); /* the batch holds its own reference */
    free(m->details);
    free(m);
    if (e != GRPC_CALL_OK) {
        LOG_ERROR("call %llu: start_batch(send) failed: %d", (unsigned long long)c->id, (int)e);
        return;
    }
    c->sending = 1;
    c->outstanding++;
}

static void access_log(const call_ctx *c, int code) {
    mm_access_entry a = {"grpc", c->peer, c->method == M_STREAM ? "GenerateStream" : "Generate", c->request_id, code,
                         c->prompt_tokens, c->completion_tokens, c->n_images_done, c->ttft_ms, mm_now_ms() - c->t_arrival_ms};
    mm_access_log(&a);
}

/* Queues a message and/or the final status for c. */
static void call_send(mm_grpc_server *s, call_ctx *c, grpc_byte_buffer *bb, int final, grpc_status_code code,
                      const char *details) {
    out_msg *m = calloc(1, sizeof *m);
    if (!m) {
        if (bb) grpc_byte_buffer_destroy(bb);
        return;
    }
    m->bb = bb, m->final = final, m->code = code;
    if (details) m->details = strdup(details);
    if (final) c->answered = 1;
    if (final && (c->method == M_GENERATE || c->method == M_STREAM)) { /* every request ends here, once */
        mm_metrics_inc(s->p.metrics, MM_METRIC_REQUESTS_TOTAL, (int)code);
        mm_metrics_observe(s->p.metrics, MM_METRIC_REQUEST_DURATION_SECONDS, 0, (mm_now_ms() - c->t_arrival_ms) * 1e-3);
        access_log(c, (int)code);
    }
    if (c->tail) c->tail->next = m;
    else c->head = m;
    c->tail = m;
    pump(s, c);
}

static void call_fail(mm_grpc_server *s, call_ctx *c, grpc_status_code code, const char *msg) {
    call_send(s, c, NULL, 1, code, msg);
}

/* ---------------------------------------------------------------- requests (cq thread) */

static void to_sched(mm_grpc_server *s, mm_msg_type type, uint64_t id, mm_request *req) {
    mm_msg m = {type, id, req};
    if (zmq_send(s->to_sched, &m, sizeof m, 0) != (int)sizeof m) {
        LOG_ERROR("zmq_send to the scheduler: %s", zmq_strerror(zmq_errno()));
        mm_request_free(req);
    }
}

static int read_bb(grpc_byte_buffer *bb, uint8_t **data, size_t *len) {
    grpc_byte_buffer_reader rd;
    if (!grpc_byte_buffer_reader_init(&rd, bb)) return 0;
    grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    *len = GRPC_SLICE_LENGTH(sl);
    *data = malloc(*len ? *len : 1);
    if (*data) memcpy(*data, GRPC_SLICE_START_PTR(sl), *len);
    grpc_slice_unref(sl);
    return *data != NULL;
}

static void handle_health(mm_grpc_server *s, call_ctx *c, const uint8_t *data, size_t len) {
    Grpc__Health__V1__HealthCheckRequest *req = grpc__health__v1__health_check_request__unpack(NULL, len, data);
    if (!req) {
        call_fail(s, c, GRPC_STATUS_INVALID_ARGUMENT, "malformed grpc.health.v1.HealthCheckRequest");
        return;
    }
    if (req->service[0] && strcmp(req->service, "metamorph.v1.MetaMorph")) {
        call_fail(s, c, GRPC_STATUS_NOT_FOUND, "unknown service");
    } else {
        Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        resp.status = atomic_load(s->p.serving) ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                                                : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
        uint8_t buf[16];
        size_t n = grpc__health__v1__health_check_response__pack(&resp, buf);
        call_send(s, c, bytes_to_bb(buf, n), 1, GRPC_STATUS_OK, NULL);
    }
    grpc__health__v1__health_check_request__free_unpacked(req, NULL);
}

static void handle_generate(mm_grpc_server *s, call_ctx *c, const uint8_t *data, size_t len) {
    Metamorph__V1__GenerateRequest *g = metamorph__v1__generate_request__unpack(NULL, len, data);
    if (!g) {
        call_fail(s, c, GRPC_STATUS_INVALID_ARGUMENT, "malformed metamorph.v1.GenerateRequest");
        return;
    }
    mm_request *r;
    char msg[512];
    int code = mm_request_build(g, &s->p.limits, &r, msg, sizeof msg);
    metamorph__v1__generate_request__free_unpacked(g, NULL);
    if (code) {
        call_fail(s, c, (grpc_status_code)code, msg);
        return;
    }
    int64_t tokens = (int64_t)r->n_prompt + r->max_new_tokens;
    if (s->p.keys && c->key_name[0]) {
        if (!mm_api_keys_acquire(s->p.keys, c->key_name, tokens, msg, sizeof msg)) {
            mm_request_free(r);
            call_fail(s, c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
            return;
        }
        c->key_tokens = tokens;
    }
    snprintf(c->request_id, sizeof c->request_id, "%s", r->request_id);
    r->call_id = c->id;
    r->stream = c->method == M_STREAM;
    r->t_arrival_ms = c->t_arrival_ms;
    r->deadline_ms = c->deadline_ms;
    c->submitted = 1;
    to_sched(s, MM_MSG_SUBMIT, c->id, r);
}

static int start_batch(call_ctx *c, grpc_op *op, op_tag *tag);

/* One request of a reflection stream: its answer, then a receive for the next one (the
 * client's half-close ends the stream with OK: on_message). */
static void handle_reflection(mm_grpc_server *s, call_ctx *c, const uint8_t *data, size_t len) {
    uint8_t *out;
    size_t n;
    if (mm_reflection_answer(data, len, &out, &n) != 0) {
        call_fail(s, c, GRPC_STATUS_INVALID_ARGUMENT, "malformed grpc.reflection.v1.ServerReflectionRequest");
        return;
    }
    call_send(s, c, bytes_to_bb(out, n), 0, GRPC_STATUS_OK, NULL);
    free(out);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    start_batch(c, &op, &c->t_recv);
}

static void on_message(mm_grpc_server *s, call_ctx *c) {
    if (!c->recv_bb && c->method == M_REFLECTION) {
        call_send(s, c, NULL, 1, GRPC_STATUS_OK, NULL);
        return;
    }
    if (!c->recv_bb) {
        call_fail(s, c, GRPC_STATUS_INVALID_ARGUMENT, "the request message is missing");
        return;
    }
    uint8_t *data;
    size_t len;
    if (!read_bb(c->recv_bb, &data, &len)) {
        call_fail(s, c, GRPC_STATUS_INTERNAL, "cannot read the request message");
        return;
    }
    grpc_byte_buffer_destroy(c->recv_bb);
    c->recv_bb = NULL;
    switch (c->method) {
    case M_HEALTH: handle_health(s, c, data, len); break;
    case M_REFLECTION: handle_reflection(s, c, data, len); break;
    case M_GENERATE:
    case M_STREAM: handle_generate(s, c, data, len); break;
    case M_INFO:
        c->submitted = 1;
        to_sched(s, MM_MSG_INFO, c->id, NULL);
        break;
    default: call_fail(s, c, GRPC_STATUS_INTERNAL, "no handler"); break;
    }
    free(data);
}

static int start_batch(call_ctx *c, grpc_op *op, op_tag *tag) {
    grpc_call_error e = grpc_call_start_batch(c->call, op, 1, tag, NULL);
    if (e != GRPC_CALL_OK) {
        LOG_ERROR("call %llu: start_batch failed: %d", (unsigned long long)c->id, (int)e);
        return 0;
    }
    c->outstanding++;
    return 1;
}

static void post_request_call(mm_grpc_server *s) {
    call_ctx *c = ctx_new(s);
    if (!c) {
        LOG_ERROR("out of memory: no new calls accepted");
        s->pending = NULL;
        return;
    }
    s->pending = c;
    grpc_call_error e = grpc_server_request_call(s->server, &c->call, &c->details, &c->md, s->cq, s->cq, &c->t_new);
    if (e != GRPC_CALL_OK) {
        LOG_ERROR("grpc_server_request_call failed: %d", (int)e);
        ctx_destroy(c);
        s->pending = NULL;
    }
}

/* With api keys: does the call carry "authorization: Bearer KEY" for a key in force?
 * (The health check passes without one when the operator opened it.) */
static int authorized(mm_grpc_server *s, call_ctx *c) {
    if (!s->p.keys || (c->method == M_HEALTH && s->p.health_open)) return 1;
    for (size_t i = 0; i < c->md.count; i++) {
        const grpc_metadata *m = &c->md.metadata[i];
        if (GRPC_SLICE_LENGTH(m->key) != 13 || memcmp(GRPC_SLICE_START_PTR(m->key), "authorization", 13)) continue;
        return mm_api_keys_check(s->p.keys, (const char *)GRPC_SLICE_START_PTR(m->value), GRPC_SLICE_LENGTH(m->value),
                                 c->key_name);
    }
    return 0;
}

static void on_new_call(mm_grpc_server *s, call_ctx *c, int ok) {
    s->pending = NULL;
    if (!ok) { /* shutting down */
        ctx_destroy(c);
        return;
    }
    post_request_call(s);
    c->t_arrival_ms = mm_now_ms();
    char *peer = grpc_call_get_peer(c->call);
    const char *shown = peer ? peer : ""; /* "ipv4:127.0.0.1:5000" -> "127.0.0.1:5000", as the HTTP door's */
    if (!strncmp(shown, "ipv4:", 5) || !strncmp(shown, "ipv6:", 5)) shown += 5;
    mm_h2_guard_peer(s->guard, shown, c->peer, sizeof c->peer); /* "fd:N" -> the client's address */
    gpr_free(peer);
    gpr_timespec dl = gpr_convert_clock_type(c->details.deadline, GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(dl, gpr_inf_future(GPR_CLOCK_MONOTONIC)) != 0) {
        gpr_timespec left = gpr_time_sub(dl, gpr_now(GPR_CLOCK_MONOTONIC));
        c->deadline_ms = c->t_arrival_ms + (double)left.tv_sec * 1e3 + (double)left.tv_nsec * 1e-6;
        if (c->deadline_ms <= c->t_arrival_ms) c->deadline_ms = c->t_arrival_ms + 1e-3;
    }
    char method[128];
    size_t n = GRPC_SLICE_LENGTH(c->details.method);
    if (n >= sizeof method) n = sizeof method - 1;
    memcpy(method, GRPC_SLICE_START_PTR(c->details.method), n);
    method[n] = 0;
    c->method = M_UNKNOWN;
    for (size_t i = 0; i < sizeof METHODS / sizeof METHODS[0]; i++)
        if (!strcmp(method, METHODS[i].path)) c->method = METHODS[i].id;
    pthread_mutex_lock(&s->mu);
    table_add(s, c);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    if (!start_batch(c, &op, &c->t_close)) c->close_done = 1;
    if (c->method == M_UNKNOWN) {
        char msg[200];
        snprintf(msg, sizeof msg, "unknown method %s", method);
        call_fail(s, c, GRPC_STATUS_UNIMPLEMENTED, msg);
    } else if (!authorized(s, c)) { /* says nothing about why: no oracle for guessing */
        call_fail(s, c, GRPC_STATUS_UNAUTHENTICATED, "missing or invalid API key");
    } else {
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &c->recv_bb;
        start_batch(c, &op, &c->t_recv);
    }
    pthread_mutex_unlock(&s->mu);
}

/* Under mu: frees c once nothing can reference it any more. */
static void maybe_free(mm_grpc_server *s, call_ctx *c) {
    if (!c->close_done || c->outstanding > 0) return;
    table_remove(s, c);
    if (c->submitted && !c->answered) { /* the client went away first: counted as CANCELLED */
        to_sched(s, MM_MSG_CANCEL, c->id, NULL);
        if (c->method == M_GENERATE || c->method == M_STREAM) {
            mm_metrics_inc(s->p.metrics, MM_METRIC_REQUESTS_TOTAL, GRPC_STATUS_CANCELLED);
            mm_metrics_observe(s->p.metrics, MM_METRIC_REQUEST_DURATION_SECONDS, 0, (mm_now_ms() - c->t_arrival_ms) * 1e-3);
            access_log(c, GRPC_STATUS_CANCELLED);
        }
    }
    if (c->key_tokens >= 0) mm_api_keys_release(s->p.keys, c->key_name, 1, c->key_tokens);
    ctx_destroy(c);
}

static void on_event(mm_grpc_server *s, op_tag *t, int ok) {
    call_ctx *c = t->c;
    if (t->kind == TAG_NEW_CALL) {
        on_new_call(s, c, ok);
        return;
    }
    pthread_mutex_lock(&s->mu);
    c->outstanding--;
    switch (t->kind) {
    case TAG_RECV:
        if (ok && !c->close_done) on_message(s, c);
        break;
    case TAG_CLOSE:
        c->close_done = 1;
        break;
    case TAG_SEND:
        c->sending = 0;
        if (ok) pump(s, c);
        break;
    default: break;
    }
    maybe_free(s, c);
    pthread_mutex_unlock(&s->mu);
}

static void *cq_main(void *arg) {
    mm_grpc_server *s = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        op_tag *t = ev.tag;
        if (t->kind == TAG_SHUTDOWN) {
            grpc_completion_queue_shutdown(s->cq);
            continue;
        }
        on_event(s, t, ev.success);
    }
    return NULL;
}

/* ---------------------------------------------------------------- replies (reply thread) */

static grpc_byte_buffer *pack_event(const Metamorph__V1__GenerateEvent *ev) {
    size_t n = metamorph__v1__generate_event__get_packed_size(ev);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return NULL;
    metamorph__v1__generate_event__pack(ev, buf);
    grpc_byte_buffer *bb = bytes_to_bb(buf, n);
    free(buf);
    return bb;
}

static int append_delta(call_ctx *c, const mm_reply *r) {
    if (c->text_len + r->text_len + 1 > c->text_cap) {
        size_t cap = c->text_cap ? c->text_cap * 2 : 256;
        while (cap < c->text_len + r->text_len + 1) cap *= 2;
        char *t = realloc(c->text, cap);
        if (!t) return 0;
        c->text = t, c->text_cap = cap;
    }
    memcpy(c->text + c->text_len, r->text, r->text_len);
    c->text_len += r->text_len;
    c->text[c->text_len] = 0;
    if (c->n_ids + (size_t)r->n_ids > c->cap_ids) {
        size_t cap = c->cap_ids ? c->cap_ids * 2 : 64;
        while (cap < c->n_ids + (size_t)r->n_ids) cap *= 2;
        int32_t *ids = realloc(c->ids, cap * sizeof *ids);
        if (!ids) return 0;
        c->ids = ids, c->cap_ids = cap;
    }
    memcpy(c->ids + c->n_ids, r->ids, (size_t)r->n_ids * sizeof *r->ids);
    c->n_ids += (size_t)r->n_ids;
    return 1;
}

static void fill_final(mm_reply *r, Metamorph__V1__GenerateResponse *resp, Metamorph__V1__Usage *u,
                       Metamorph__V1__Timings *tm) {
    u->prompt_tokens = r->prompt_tokens, u->completion_tokens = r->completion_tokens, u->images = r->images;
    u->cached_tokens = r->cached_tokens;
    tm->queue_ms = r->queue_ms, tm->ttft_ms = r->ttft_ms, tm->total_ms = r->total_ms, tm->tokens_per_s = r->tokens_per_s;
    resp->usage = u, resp->timings = tm;
    resp->finish_reason = (char *)r->finish_reason;
    resp->request_id = r->request_id;
}

static void deliver(mm_grpc_server *s, call_ctx *c, mm_reply *r) {
    int stream = c->method == M_STREAM;
    Metamorph__V1__GenerateEvent ev = METAMORPH__V1__GENERATE_EVENT__INIT;
    switch (r->type) {
    case MM_REPLY_DELTA: {
        if (!stream) {
            if (!append_delta(c, r)) call_fail(s, c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        Metamorph__V1__TextDelta d = METAMORPH__V1__TEXT_DELTA__INIT;
        char *text = strndup(r->text ? r->text : "", r->text_len);
        d.text = text ? text : (char *)"";
        d.n_token_ids = (size_t)r->n_ids, d.token_ids = r->ids;
        ev.event_case = METAMORPH__V1__GENERATE_EVENT__EVENT_DELTA, ev.delta = &d;
        call_send(s, c, pack_event(&ev), 0, GRPC_STATUS_OK, NULL);
        free(text);
        return;
    }
    case MM_REPLY_IMAGE_STARTED: {
        if (!stream) return;
        Metamorph__V1__ImageStarted is = METAMORPH__V1__IMAGE_STARTED__INIT;
        is.index = r->image_index;
        ev.event_case = METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_STARTED, ev.image_started = &is;
        call_send(s, c, pack_event(&ev), 0, GRPC_STATUS_OK, NULL);
        return;
    }
    case MM_REPLY_IMAGE_READY: {
        /* png empty when no decoder pool serves this model */
        Metamorph__V1__GeneratedImage im = METAMORPH__V1__GENERATED_IMAGE__INIT;
        im.n_tokens = r->n_visual, im.dim = r->visual_dim;
        if (r->png) im.png.data = r->png, im.png.len = r->n_png;
        if (r->visual) im.n_visual_tokens = (size_t)r->n_visual * (size_t)r->visual_dim, im.visual_tokens = r->visual;
        if (!stream) { /* unary: kept for the response; the tokens move out of the reply */
            Metamorph__V1__GeneratedImage *keep = malloc(sizeof *keep);
            Metamorph__V1__GeneratedImage **grown = realloc(c->images, (c->n_images + 1) * sizeof *grown);
            if (grown) c->images = grown;
            if (!keep || !grown) {
                free(keep);
                call_fail(s, c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
            }
            *keep = im;
            r->visual = NULL, r->png = NULL;
            c->images[c->n_images++] = keep;
            return;
        }
        ev.event_case = METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_READY, ev.image_ready = &im;
        call_send(s, c, pack_event(&ev), 0, GRPC_STATUS_OK, NULL);
        return;
    }
    case MM_REPLY_FINAL: {
        Metamorph__V1__GenerateResponse resp = METAMORPH__V1__GENERATE_RESPONSE__INIT;
        Metamorph__V1__Usage u = METAMORPH__V1__USAGE__INIT;
        Metamorph__V1__Timings tm = METAMORPH__V1__TIMINGS__INIT;
        fill_final(r, &resp, &u, &tm);
        c->prompt_tokens = r->prompt_tokens, c->completion_tokens = r->completion_tokens, c->n_images_done = r->images;
        c->ttft_ms = r->ttft_ms;
        grpc_byte_buffer *bb;
        if (stream) {
            ev.event_case = METAMORPH__V1__GENERATE_EVENT__EVENT_FINAL, ev.final = &resp;
            bb = pack_event(&ev);
        } else {
            resp.text = c->text ? c->text : (char *)"";
            resp.n_token_ids = c->n_ids, resp.token_ids = c->ids;
            resp.n_images = c->n_images, resp.images = c->images;
            size_t n = metamorph__v1__generate_response__get_packed_size(&resp);
            uint8_t *buf = malloc(n ? n : 1);
            if (!buf) {
                call_fail(s, c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
            }
            metamorph__v1__generate_response__pack(&resp, buf);
            bb = bytes_to_bb(buf, n);
            free(buf);
        }
        call_send(s, c, bb, 1, GRPC_STATUS_OK, NULL);
        return;
    }
    case MM_REPLY_ERROR: call_fail(s, c, (grpc_status_code)r->code, r->message); return;
    case MM_REPLY_INFO: call_send(s, c, bytes_to_bb(r->bytes, r->n_bytes), 1, GRPC_STATUS_OK, NULL); return;
    default: return;
    }
}

static void *reply_main(void *arg) {
    mm_grpc_server *s = arg;
    for (;;) {
        mm_reply *r = NULL;
        int n = zmq_recv(s->from_sched, &r, sizeof r, 0);
        if (n < 0) {
            if (zmq_errno() == EINTR) continue;
            LOG_ERROR("reply thread: zmq_recv: %s", zmq_strerror(zmq_errno()));
            return NULL;
        }
        if (n != (int)sizeof r || !r) continue;
        if (r->type == MM_REPLY_STOP) {
            mm_reply_free(r);
            return NULL;
        }
        pthread_mutex_lock(&s->mu);
        call_ctx *c = table_find(s, r->call_id);
        if (c && !c->answered && !c->close_done) deliver(s, c, r);
        pthread_mutex_unlock(&s->mu);
        mm_reply_free(r);
    }
}

/* ---------------------------------------------------------------- lifecycle */

/* Without the guard: TLS from the PEM texts when given (client certificates required and
 * verified when a client CA is given), else plain text. */
static mm_status server_credentials(const mm_grpc_params *p, grpc_server_credentials **out) {
    if (p->guard || !p->tls || !p->tls->cert_pem) {
        *out = grpc_insecure_server_credentials_create();
        return MM_OK;
    }
    grpc_ssl_pem_key_cert_pair pair = {p->tls->key_pem, p->tls->cert_pem};
    *out = grpc_ssl_server_credentials_create_ex(
        p->tls->client_ca_pem, &pair, 1,
        p->tls->client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                              : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
    return *out ? MM_OK : MM_ERROR(MM_ERR_INVALID, "gRPC TLS credentials from tls_cert / tls_key were refused");
}

mm_status mm_grpc_start(const mm_grpc_params *p, mm_grpc_server **out) {
    mm_grpc_server *s = calloc(1, sizeof *s);
    CHECK(CHECK_ALLOC(s));
    s->p = *p;
    pthread_mutex_init(&s->mu, NULL);
    s->t_shutdown = (op_tag){TAG_SHUTDOWN, NULL};
    mm_status rc = MM_OK;
    s->to_sched = zmq_socket(p->zmq_ctx, ZMQ_PUSH);
    s->from_sched = zmq_socket(p->zmq_ctx, ZMQ_PULL);
    if (!s->to_sched || !s->from_sched || zmq_connect(s->to_sched, MM_ENDPOINT_REQUESTS) ||
        zmq_connect(s->from_sched, MM_ENDPOINT_REPLIES)) {
        rc = MM_ERROR(MM_ERR_IO, "inproc sockets: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    /* One owner per port: gRPC's default SO_REUSEPORT let a second coordinator share the
     * port (and half the traffic) silently. A bind of our own first gives the precise
     * error (e.g. "Address already in use"); gRPC then binds without SO_REUSEPORT. (With
     * the guard the port is ours: bound now, served once the server has started.) */
    if (p->guard) {
        mm_h2_guard_params gp = {.listen = p->listen, .tls = p->tls, .max_connections = p->max_connections,
                                 .max_per_peer = p->max_per_peer, .handshake_ms = p->handshake_ms,
                                 .frames = MM_H2_DEFAULT_LIMITS, .metrics = p->metrics};
        if ((rc = mm_h2_guard_open(&gp, &s->guard)) != MM_OK) goto fail;
    } else {
        int probe = -1;
        if ((rc = mm_tcp_listen("listen", p->listen, &probe)) != MM_OK) goto fail;
        close(probe);
    }
    grpc_init();
    grpc_resource_quota *quota = grpc_resource_quota_create("metamorph");
    grpc_resource_quota_resize(quota, (size_t)HTTP2_MEMORY_QUOTA_MB << 20);
    grpc_arg arg[] = {
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, .value.integer = p->max_receive_bytes},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_METADATA_SIZE, .value.integer = HTTP2_MAX_HEADER_BYTES},
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS, .value.integer = HTTP2_MAX_STREAMS},
        {.type = GRPC_ARG_POINTER, .key = (char *)GRPC_ARG_RESOURCE_QUOTA,
         .value.pointer = {quota, grpc_resource_quota_arg_vtable()}},
    };
    grpc_channel_args args = {sizeof arg / sizeof *arg, arg};
    s->server = grpc_server_create(&args, NULL);
    grpc_resource_quota_unref(quota); /* the server holds its own reference */
    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    grpc_server_credentials *creds = NULL;
    int port = 0;
    if (!p->guard && (rc = server_credentials(p, &creds)) == MM_OK) {
        port = grpc_server_add_http2_port(s->server, p->listen, creds);
        grpc_server_credentials_release(creds);
        if (port == 0) rc = MM_ERROR(MM_ERR_IO, "cannot listen on %s", p->listen);
    }
    if (rc != MM_OK) { /* a server never started: destroyed, its queue drained */
        grpc_server_destroy(s->server);
        grpc_completion_queue_shutdown(s->cq);
        while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(s->cq);
        s->server = NULL, s->cq = NULL;
        grpc_shutdown();
        goto fail;
    }
    grpc_server_start(s->server);
    if (!p->guard)
        LOG_WARN("gRPC: http2_guard is 0: HTTP/2 floods (CONTINUATION, Rapid Reset) are not bounded (README, Security)");
    post_request_call(s);
    if (pthread_create(&s->cq_thread, NULL, cq_main, s) == 0) s->cq_started = 1;
    if (pthread_create(&s->reply_thread, NULL, reply_main, s) == 0) s->reply_started = 1;
    if (!s->cq_started || !s->reply_started || (s->guard && mm_h2_guard_run(s->guard, s->server) != MM_OK)) {
        rc = MM_ERROR(MM_ERR_INTERNAL, "cannot start the gRPC threads");
        mm_grpc_stop(s);
        return rc;
    }
    LOG_INFO("gRPC listening on %s (receive limit %d bytes)", p->listen, p->max_receive_bytes);
    *out = s;
    return MM_OK;
fail:
    mm_h2_guard_stop(s->guard);
    if (s->to_sched) zmq_close(s->to_sched);
    if (s->from_sched) zmq_close(s->from_sched);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return rc;
}

void mm_grpc_stop(mm_grpc_server *s) {
    if (!s) return;
    if (s->reply_started) pthread_join(s->reply_thread, NULL);
    if (s->server) {
        mm_h2_guard_close_door(s->guard); /* open connections still relay the last replies */
        grpc_server_shutdown_and_notify(s->server, s->cq, &s->t_shutdown);
        grpc_server_cancel_all_calls(s->server);
        if (s->cq_started) pthread_join(s->cq_thread, NULL);
        mm_h2_guard_stop(s->guard);
        grpc_server_destroy(s->server);
        grpc_completion_queue_destroy(s->cq);
        grpc_shutdown();
    }
    for (int b = 0; b < N_BUCKETS; b++)
        while (s->buckets[b]) {
            call_ctx *c = s->buckets[b];
            s->buckets[b] = c->next_in_bucket;
            ctx_destroy(c);
        }
    zmq_close(s->to_sched);
    zmq_close(s->from_sched);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
