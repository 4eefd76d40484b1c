/* See engine.h. */
#include "engine.h"

#include <grpc/status.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/log.h"
#include "messages.h"
#include "model/metamorph.h"
#include "pipeline/step_plan.h"
#include "proto/metamorph.pb-c.h"
#include "scheduler/scheduler.h"

_Static_assert(MM_EMBED_KEY_BYTES == MM_IMAGE_KEY_BYTES, "the prefix cache names image rows by the embedding cache's key");

#define DETOK_CAP 16384
#define IDLE_POLL_MS 250

typedef struct {
    mm_request *req;
    mm_seq *seq;
    mm_detok detok;
    char *held;               /* text not yet sent: may be the start of a stop string */
    size_t held_len, held_cap;
    size_t max_stop_len;
    int32_t n_generated, image_index;
    double t_first_sched, t_first_token, t_last_token;
    uint64_t enc_base;        /* encode jobs enc_base + k for image k of the prompt */
    int encodes_left;         /* > 0: waiting for the encoder, not in the scheduler yet */
    int decodes_left;         /* generated images still with the decoder pool */
    int32_t images_sent;      /* IMAGE_READY replies sent (images leave in order) */
    int llm_done;             /* the sequence has finished (and left the scheduler) */
    const char *finish;       /* its finish reason, once llm_done */
    int32_t n_images_done;    /* images the sequence produced, once llm_done */
    int32_t cached_tokens;    /* prompt rows whose KV came from the prefix cache, once llm_done */
    double t_pool_wait;       /* since when it waits on a pool that has no worker (0: not) */
} job;

/* One generated image with the decoder pool: its request, its index there, and its
 * visual tokens when the request asked for them back. Images leave in index order, so
 * one decoded early (another worker was faster) waits here, ready, for those before. */
typedef struct {
    uint64_t job_id;
    uint64_t call_id;
    int32_t image_index;
    float *visual;            /* [image_tokens, visual_dim] or NULL */
    mm_reply *ready;          /* its IMAGE_READY once decoded, NULL before */
} decode_wait;

typedef struct {
    mm_step *step;
    double t_sent_ms;
} in_flight;

struct mm_engine {
    mm_engine_params p;
    mm_sched *sched;
    void *requests;            /* PULL (bound): both front doors' mm_msg */
    void *replies;             /* PUSH (bound): mm_reply to the gRPC door */
    void *http_replies;        /* PUSH (bound): mm_reply to the HTTP door (call ids with MM_CALL_ID_HTTP) */
    job **jobs;
    int n_jobs, cap_jobs;
    in_flight fifo[MM_MAX_STAGES];
    int n_fifo;
    int failed;
    double failed_at_ms;
    uint64_t next_enc;        /* encode job ids */
    int n_encoding;           /* jobs waiting for the encoder (they count against max_queue) */
    uint64_t next_dec;        /* decode job ids */
    decode_wait *decodes;     /* [n_decodes] images with the decoder pool */
    int n_decodes, cap_decodes;
    double t_gauges;          /* when the metrics' gauges were last set */
    double t_report;          /* when the last throughput line was logged */
    uint64_t report_prompt, report_generated; /* prompt rows admitted, tokens generated since then */
    char detok_buf[DETOK_CAP];
};

int32_t mm_engine_max_context(const mm_serve_config *cfg, const mm_llama_config *llm) {
    int64_t kv = (int64_t)cfg->kv_blocks * cfg->kv_block_size;
    return kv < llm->max_pos ? (int32_t)kv : llm->max_pos;
}

/* ---------------------------------------------------------------- replies */

/* Never waits (this is the scheduler thread: pools' heartbeats and the pipeline must
 * not stall behind a slow reply thread): the PUSH has no high-water mark, so the send
 * can only fail when nobody is connected, and then the reply is dropped and logged. */
static void send_reply_to(void *socket, mm_reply *r) {
    if (zmq_send(socket, &r, sizeof r, ZMQ_DONTWAIT) != (int)sizeof r) {
        LOG_ERROR("zmq_send reply: %s", zmq_strerror(zmq_errno()));
        mm_reply_free(r);
    }
}

static void send_reply(mm_engine *e, mm_reply *r) {
    send_reply_to(r->call_id & MM_CALL_ID_HTTP ? e->http_replies : e->replies, r);
}

static mm_reply *reply_new(mm_reply_type type, uint64_t call_id) {
    mm_reply *r = calloc(1, sizeof *r);
    if (r) r->type = type, r->call_id = call_id;
    return r;
}

static void reply_error(mm_engine *e, uint64_t call_id, int code, const char *msg) {
    mm_reply *r = reply_new(MM_REPLY_ERROR, call_id);
    if (!r) return;
    r->code = code;
    snprintf(r->message, sizeof r->message, "%s", msg);
    send_reply(e, r);
}

static void reply_delta(mm_engine *e, job *j, const char *text, size_t len, const int32_t *ids, int n_ids) {
    if (len == 0 && n_ids == 0) return;
    mm_reply *r = reply_new(MM_REPLY_DELTA, j->req->call_id);
    if (!r) return;
    r->text = malloc(len + 1);
    r->ids = malloc((size_t)(n_ids ? n_ids : 1) * sizeof *ids);
    if (!r->text || !r->ids) {
        mm_reply_free(r);
        return;
    }
    if (len) memcpy(r->text, text, len); /* text and ids may be NULL when empty */
    r->text[len] = 0;
    r->text_len = len;
    if (n_ids) memcpy(r->ids, ids, (size_t)n_ids * sizeof *ids);
    r->n_ids = n_ids;
    send_reply(e, r);
}

/* ---------------------------------------------------------------- jobs */

static job *job_find(mm_engine *e, uint64_t call_id, int *index) {
    for (int i = 0; i < e->n_jobs; i++)
        if (e->jobs[i]->req->call_id == call_id) {
            if (index) *index = i;
            return e->jobs[i];
        }
    return NULL;
}

/* Lets go of j: its sequence leaves the scheduler (blocks freed now or when its
 * micro-batch returns). */
static void job_drop(mm_engine *e, job *j) {
    int i;
    if (job_find(e, j->req->call_id, &i)) e->jobs[i] = e->jobs[--e->n_jobs];
    if (j->encodes_left > 0) { /* its encode jobs are of no use any more */
        for (int k = 0; k < j->req->n_images; k++) mm_encoder_pool_cancel(e->p.encoder, j->enc_base + (uint64_t)k);
        e->n_encoding--;
    }
    for (int i = e->n_decodes - 1; i >= 0; i--)
        if (e->decodes[i].call_id == j->req->call_id) {
            mm_decoder_pool_cancel(e->p.decoder, e->decodes[i].job_id);
            free(e->decodes[i].visual);
            mm_reply_free(e->decodes[i].ready);
            e->decodes[i] = e->decodes[--e->n_decodes];
        }
    if (j->seq) mm_sched_remove(e->sched, j->seq);
    mm_request_free(j->req);
    free(j->held);
    free(j);
}

static void job_fail(mm_engine *e, job *j, int code, const char *msg) {
    reply_error(e, j->req->call_id, code, msg);
    job_drop(e, j);
}

static int held_append(job *j, const char *s, size_t n) {
    if (j->held_len + n > j->held_cap) {
        size_t cap = j->held_cap ? j->held_cap * 2 : 256;
        while (cap < j->held_len + n) cap *= 2;
        char *h = realloc(j->held, cap);
        if (!h) return 0;
        j->held = h, j->held_cap = cap;
    }
    memcpy(j->held + j->held_len, s, n);
    j->held_len += n;
    return 1;
}

/* Sends held[0, n) and keeps the rest. */
static void held_emit(mm_engine *e, job *j, size_t n, const int32_t *ids, int n_ids) {
    reply_delta(e, j, j->held, n, ids, n_ids);
    if (j->held_len > n) memmove(j->held, j->held + n, j->held_len - n); /* held may still be NULL */
    j->held_len -= n;
}

static const char *finish_name(mm_finish f) {
    switch (f) {
    case MM_FINISH_STOP: return "stop";
    case MM_FINISH_LENGTH: return "length";
    case MM_FINISH_STOP_STRING: return "stop_string";
    default: return "removed";
    }
}

/* The final reply, once the sequence has finished and every image is decoded. */
static void job_complete(mm_engine *e, job *j) {
    mm_reply *r = reply_new(MM_REPLY_FINAL, j->req->call_id);
    if (r) {
        double t = mm_now_ms();
        snprintf(r->request_id, sizeof r->request_id, "%s", j->req->request_id);
        r->finish_reason = j->finish;
        r->prompt_tokens = j->req->n_rows;
        r->cached_tokens = j->cached_tokens;
        r->completion_tokens = j->n_generated;
        r->images = j->n_images_done;
        r->queue_ms = j->t_first_sched - j->req->t_arrival_ms;
        r->ttft_ms = j->t_first_token - j->req->t_arrival_ms;
        r->total_ms = t - j->req->t_arrival_ms;
        r->tokens_per_s = j->n_generated > 1 && t > j->t_first_token ? (j->n_generated - 1) / ((t - j->t_first_token) * 1e-3) : 0;
        send_reply(e, r);
        mm_trace_request(e->p.trace, "done", j->req->call_id);
    }
    job_drop(e, j);
}

static void send_ready_images(mm_engine *e, job *j);

/* The sequence has finished: the rest of the text goes out, its KV blocks are freed,
 * and the request completes now or when its last image is decoded. */
static void job_llm_done(mm_engine *e, job *j) {
    int w = mm_detok_flush(&j->detok, e->detok_buf, sizeof e->detok_buf);
    if (w > 0) held_append(j, e->detok_buf, (size_t)w);
    if (j->held_len) held_emit(e, j, j->held_len, NULL, 0);
    j->llm_done = 1;
    j->finish = finish_name(j->seq->finish);
    j->n_images_done = j->seq->n_images;
    j->cached_tokens = j->seq->cached_tokens;
    mm_sched_remove(e->sched, j->seq);
    j->seq = NULL;
    send_ready_images(e, j);
}

/* A new text token: detokenize, watch the stop strings, stream what is safe to send.
 * Returns 0 when the job had to be dropped. */
static int on_token(mm_engine *e, job *j, int32_t id) {
    int eos = mm_llama_is_eos(e->p.llm, id);
    if (!eos) {
        int w = mm_detok_push(&j->detok, e->p.tok, id, e->detok_buf, sizeof e->detok_buf);
        if (w > 0 && !held_append(j, e->detok_buf, (size_t)w)) {
            job_fail(e, j, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            return 0;
        }
    }
    for (int k = 0; k < j->req->n_stop; k++) {
        char *hit = memmem(j->held, j->held_len, j->req->stop[k], strlen(j->req->stop[k]));
        if (hit) {
            j->held_len = (size_t)(hit - j->held);
            held_emit(e, j, j->held_len, &id, 1);
            mm_sched_finish(e->sched, j->seq, MM_FINISH_STOP_STRING);
            return 1;
        }
    }
    /* hold back what could still grow into a stop string, cut at a UTF-8 boundary */
    size_t keep = j->max_stop_len ? j->max_stop_len - 1 : 0;
    size_t cut = j->held_len > keep ? j->held_len - keep : 0;
    while (cut > 0 && cut < j->held_len && ((unsigned char)j->held[cut] & 0xC0) == 0x80) cut--;
    held_emit(e, j, cut, &id, 1);
    return 1;
}

static float *copy_floats(const float *x, size_t n) {
    float *y = malloc(n * sizeof *y);
    if (y) memcpy(y, x, n * sizeof *y);
    return y;
}

/* Sends the image to the decoder pool; IMAGE_READY goes out when its PNG is back.
 * Returns 0 when the job had to be failed. */
static int decode_submit(mm_engine *e, job *j, int32_t image_index, const float *tokens) {
    const mm_sched_params *sp = mm_sched_get_params(e->sched);
    const mm_request *q = j->req;
    size_t n = (size_t)sp->image_tokens * (size_t)sp->visual_dim;
    if (e->n_decodes == e->cap_decodes) {
        int cap = e->cap_decodes ? e->cap_decodes * 2 : 16;
        decode_wait *d = realloc(e->decodes, (size_t)cap * sizeof *d);
        if (!d) {
            job_fail(e, j, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            return 0;
        }
        e->decodes = d, e->cap_decodes = cap;
    }
    decode_wait w = {e->next_dec++, q->call_id, image_index, NULL, NULL};
    if (q->return_visual_tokens && !(w.visual = copy_floats(tokens, n))) {
        job_fail(e, j, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return 0;
    }
    if (mm_decoder_pool_submit(e->p.decoder, w.job_id, tokens, &q->image) != MM_OK) {
        free(w.visual);
        job_fail(e, j, GRPC_STATUS_RESOURCE_EXHAUSTED, mm_error_last());
        return 0;
    }
    e->decodes[e->n_decodes++] = w;
    j->decodes_left++;
    return 1;
}

/* A visual token: streamed as id -1; a complete image (its visual tokens are the last
 * image_tokens rows) goes to the decoder pool, or straight out when there is none.
 * Returns 0 when the job had to be failed. */
static int on_visual(mm_engine *e, job *j) {
    int32_t minus_one = -1;
    reply_delta(e, j, "", 0, &minus_one, 1);
    if (j->seq->image_left > 0) return 1;
    const mm_sched_params *sp = mm_sched_get_params(e->sched);
    size_t n = (size_t)sp->image_tokens * (size_t)sp->visual_dim;
    const float *tokens = j->seq->visual + (size_t)(j->seq->n_visual - sp->image_tokens) * (size_t)sp->visual_dim;
    if (e->p.decoder) return decode_submit(e, j, j->image_index - 1, tokens);
    mm_metrics_inc(e->p.metrics, MM_METRIC_GENERATED_IMAGES_TOTAL, 0);
    mm_reply *r = reply_new(MM_REPLY_IMAGE_READY, j->req->call_id);
    if (!r) return 1;
    r->image_index = j->image_index - 1;
    r->n_visual = sp->image_tokens, r->visual_dim = sp->visual_dim;
    if (j->req->return_visual_tokens) r->visual = copy_floats(tokens, n);
    send_reply(e, r);
    j->images_sent++;
    return 1;
}

/* Sends j's decoded images that are next in order; completes j after its last one. */
static void send_ready_images(mm_engine *e, job *j) {
    for (int i = 0; i < e->n_decodes;) {
        decode_wait *w = &e->decodes[i];
        if (w->call_id != j->req->call_id || w->image_index != j->images_sent || !w->ready) {
            i++;
            continue;
        }
        send_reply(e, w->ready);
        j->images_sent++;
        j->decodes_left--;
        *w = e->decodes[--e->n_decodes];
        i = 0; /* the next image may sit anywhere */
    }
    if (j->llm_done && j->decodes_left == 0) job_complete(e, j);
}

/* Takes the decoder pool's results: IMAGE_READY with the PNG (and the visual tokens
 * when asked); a request completes with its last image. Returns how many came. */
static int take_decodes(mm_engine *e) {
    if (!e->p.decoder) return 0;
    int n = 0;
    mm_decode_result res;
    while (mm_decoder_pool_poll(e->p.decoder, &res)) {
        n++;
        int i = 0;
        while (i < e->n_decodes && e->decodes[i].job_id != res.job_id) i++;
        job *j = i < e->n_decodes ? job_find(e, e->decodes[i].call_id, NULL) : NULL;
        if (!j) { /* late: its request is gone */
            free(res.png);
            continue;
        }
        decode_wait *w = &e->decodes[i];
        if (w->ready) { /* answered already (a re-dispatched job): keep the first */
            free(res.png);
            continue;
        }
        if (res.status != MM_OK) { /* the worker refused the parameters, or failed */
            char msg[512];
            int bad_input = res.status == MM_ERR_FORMAT || res.status == MM_ERR_INVALID || res.status == MM_ERR_UNSUPPORTED;
            snprintf(msg, sizeof msg, "image %d: %s%s", w->image_index, bad_input ? "" : "the decoder failed: ", res.error);
            free(res.png);
            job_fail(e, j, bad_input ? GRPC_STATUS_INVALID_ARGUMENT : GRPC_STATUS_INTERNAL, msg);
            continue;
        }
        mm_metrics_inc(e->p.metrics, MM_METRIC_GENERATED_IMAGES_TOTAL, 0);
        const mm_sched_params *sp = mm_sched_get_params(e->sched);
        mm_reply *r = reply_new(MM_REPLY_IMAGE_READY, j->req->call_id);
        if (!r) {
            free(res.png);
            job_fail(e, j, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            continue;
        }
        r->image_index = w->image_index;
        r->n_visual = sp->image_tokens, r->visual_dim = sp->visual_dim;
        r->visual = w->visual, r->png = res.png, r->n_png = res.png_len;
        w->visual = NULL, w->ready = r;
        send_ready_images(e, j);
    }
    return n;
}

/* ---------------------------------------------------------------- pipeline */

/* why without the "file.c:123: " that errors carry for the log (clients get the rest). */
static const char *without_source(const char *why) {
    const char *c = strstr(why, ".c:");
    if (!c || memchr(why, ' ', (size_t)(c - why))) return why;
    c += 3;
    while (*c >= '0' && *c <= '9') c++;
    return c[0] == ':' && c[1] == ' ' ? c + 2 : why;
}

static void pipeline_failed(mm_engine *e, const char *why) {
    if (e->failed) return;
    e->failed = 1;
    e->failed_at_ms = mm_now_ms();
    atomic_store(e->p.serving, 0);
    LOG_ERROR("pipeline down: %s; failing %d requests, NOT_SERVING", why, e->n_jobs);
    mm_sched_abort_in_flight(e->sched);
    e->n_fifo = 0;
    /* clients get one line: an MPI error's stack (several lines) stays in the log */
    char msg[512];
    if (strchr(why, '\n')) snprintf(msg, sizeof msg, "pipeline stage unavailable: MPI communication failed (see the server log)");
    else snprintf(msg, sizeof msg, "pipeline stage unavailable: %s", without_source(why));
    while (e->n_jobs > 0) job_fail(e, e->jobs[0], GRPC_STATUS_UNAVAILABLE, msg);
}

static mm_status process_result(mm_engine *e, Metamorph__Internal__StepResult *res) {
    if (e->n_fifo == 0 || e->fifo[0].step->id != res->step_id)
        return MM_ERROR(MM_ERR_INTERNAL, "result for step %llu, expected %lld", (unsigned long long)res->step_id,
                        e->n_fifo ? (long long)e->fifo[0].step->id : -1LL);
    mm_step *st = e->fifo[0].step;
    if (e->p.trace) {
        int n_decodes = 0;
        for (int i = 0; i < st->n; i++) n_decodes += st->e[i].n_rows == 1 && st->e[i].output != MM_OUT_NONE;
        mm_trace_step(e->p.trace, st->id, e->fifo[0].t_sent_ms, res->busy_ms, st->n, st->n_rows, n_decodes);
    }
    memmove(e->fifo, e->fifo + 1, (size_t)(e->n_fifo - 1) * sizeof *e->fifo);
    e->n_fifo--;
    mm_seq_result *rs = calloc(res->n_seqs ? res->n_seqs : 1, sizeof *rs);
    CHECK(CHECK_ALLOC(rs));
    for (size_t i = 0; i < res->n_seqs; i++) {
        const Metamorph__Internal__SeqResult *q = res->seqs[i];
        rs[i] = (mm_seq_result){q->seq_id, q->token, q->n_visual ? q->visual : NULL, q->rng};
    }
    mm_status s = mm_sched_step_done(e->sched, st, rs, (int)res->n_seqs);
    free(rs);
    if (s != MM_OK) {
        mm_sched_step_release(e->sched, st);
        return s;
    }
    double t = mm_now_ms();
    for (int i = 0; i < st->n; i++) {
        mm_step_entry *en = &st->e[i];
        if (!en->seq) continue; /* removed while in flight */
        job *j = en->seq->user;
        if (en->produced) {
            int32_t row = en->seq->tokens[en->seq->n_tokens - 1];
            e->report_generated++;
            if (j->n_generated++ == 0) {
                j->t_first_token = t;
                mm_trace_request(e->p.trace, "first", j->req->call_id);
                mm_metrics_observe(e->p.metrics, MM_METRIC_TTFT_SECONDS, 0, (t - j->req->t_arrival_ms) * 1e-3);
            } else {
                mm_metrics_observe(e->p.metrics, MM_METRIC_TPOT_SECONDS, 0, (t - j->t_last_token) * 1e-3);
            }
            j->t_last_token = t;
            mm_metrics_inc(e->p.metrics, MM_METRIC_GENERATED_TOKENS_TOTAL, 0);
            if (row >= 0 && !on_token(e, j, row)) continue;
            /* a new image: after a sampled <image_start>, or at the first visual token of
             * a request that asked for an image outright */
            while (j->image_index < en->seq->n_images) {
                mm_reply *r = reply_new(MM_REPLY_IMAGE_STARTED, j->req->call_id);
                if (r) r->image_index = j->image_index, send_reply(e, r);
                j->image_index++;
            }
            if (row < 0 && !on_visual(e, j)) continue;
        }
        if (en->seq->finish != MM_FINISH_NONE) job_llm_done(e, j);
    }
    mm_sched_step_release(e->sched, st);
    return MM_OK;
}

static mm_status schedule(mm_engine *e) {
    while (e->n_fifo < mm_mpi_driver_n_stages(e->p.drv)) {
        mm_step *st;
        CHECK(mm_sched_next_step(e->sched, &st));
        if (!st) return MM_OK;
        double t = mm_now_ms();
        for (int i = 0; i < st->n; i++) {
            job *j = st->e[i].seq->user;
            if (j->t_first_sched == 0) {
                j->t_first_sched = t;
                mm_trace_request(e->p.trace, "scheduled", j->req->call_id);
            }
        }
        uint8_t *buf;
        size_t len;
        e->fifo[e->n_fifo++] = (in_flight){st, t};
        CHECK(mm_step_plan_pack(e->sched, st, &buf, &len));
        CHECK(mm_mpi_driver_send_plan(e->p.drv, buf, len));
    }
    return MM_OK;
}

/* ---------------------------------------------------------------- requests */

static void send_info(mm_engine *e, uint64_t call_id) {
    const mm_llama_config *lc = e->p.llm;
    mm_sched_stats st;
    mm_sched_get_stats(e->sched, &st);
    Metamorph__V1__ModelInfo mi = METAMORPH__V1__MODEL_INFO__INIT;
    mi.model = (char *)e->p.cfg->model;
    mi.vocab_size = lc->vocab_size, mi.n_layers = lc->n_layers, mi.dim = lc->dim;
    mi.max_context = mm_engine_max_context(e->p.cfg, lc);
    mi.n_eos_ids = (size_t)lc->n_eos, mi.eos_ids = (int32_t *)lc->eos_ids;
    mi.vision = e->p.encoder && mm_mpi_driver_has_projector(e->p.drv);
    mi.image_generation = mm_mpi_driver_has_vision_head(e->p.drv) && e->p.image_start_id >= 0;
    int P = mm_mpi_driver_n_stages(e->p.drv);
    Metamorph__V1__StageInfo si[MM_MAX_STAGES], *sp[MM_MAX_STAGES];
    for (int k = 0; k < P; k++) {
        const mm_stage_info *s = mm_mpi_driver_stage(e->p.drv, k);
        metamorph__v1__stage_info__init(&si[k]);
        si[k].rank = s->rank, si[k].host = (char *)s->host, si[k].pid = s->pid;
        si[k].layer_begin = s->layer_begin, si[k].layer_end = s->layer_end;
        si[k].block_begin = s->block_begin, si[k].block_end = s->block_end;
        si[k].busy_ms = s->busy_ms, si[k].steps = s->steps;
        sp[k] = &si[k];
    }
    mi.n_stages = (size_t)P, mi.stages = sp;
    mi.kv_block_size = e->p.cfg->kv_block_size;
    mi.kv_blocks_total = st.kv_blocks_total, mi.kv_blocks_used = st.kv_blocks_used;
    mi.kv_blocks_cached = st.kv_blocks_cached;
    mi.requests_running = st.running, mi.requests_waiting = st.waiting;
    mi.serving = atomic_load(e->p.serving);
    mm_reply *r = reply_new(MM_REPLY_INFO, call_id);
    if (!r) return;
    r->n_bytes = metamorph__v1__model_info__get_packed_size(&mi);
    r->bytes = malloc(r->n_bytes ? r->n_bytes : 1);
    if (!r->bytes) {
        mm_reply_free(r);
        return;
    }
    metamorph__v1__model_info__pack(&mi, r->bytes);
    send_reply(e, r);
}

/* Prompt rows of j's request: each image placeholder becomes image_tokens visual rows
 * (-1, their vectors in req->visual, in order); then the request enters the scheduler. */
static void job_admit(mm_engine *e, job *j) {
    mm_request *req = j->req;
    const mm_sched_params *sp = mm_sched_get_params(e->sched);
    int32_t *rows = malloc((size_t)(req->n_rows ? req->n_rows : 1) * sizeof *rows);
    if (!rows) {
        job_fail(e, j, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < req->n_prompt && n < req->n_rows; i++)
        if (req->prompt[i] == MM_IMAGE_TOKEN_INDEX)
            for (int32_t t = 0; t < sp->image_tokens && n < req->n_rows; t++) rows[n++] = -1;
        else
            rows[n++] = req->prompt[i];
    mm_status s = n == req->n_rows ? MM_OK : MM_ERROR(MM_ERR_INTERNAL, "prompt rows %d != %d", n, req->n_rows);
    if (s == MM_OK)
        s = mm_sched_add(e->sched, req->call_id, rows, n, req->visual, (const uint8_t(*)[MM_IMAGE_KEY_BYTES])req->image_key,
                         req->image_key ? req->n_images : 0, req->max_new_tokens, &req->sampling, req->seed,
                         req->generate_image ? sp->image_tokens : 0, j, &j->seq);
    if (s == MM_OK) {
        e->report_prompt += (uint64_t)n;
        mm_trace_request(e->p.trace, "admitted", req->call_id);
    }
    free(rows);
    if (s != MM_OK)
        job_fail(e, j, s == MM_ERR_INVALID ? GRPC_STATUS_INVALID_ARGUMENT : GRPC_STATUS_INTERNAL, mm_error_last());
}

/* Sends j's images to the encoder; j enters the scheduler when all are back. */
static void job_encode(mm_engine *e, job *j) {
    mm_request *req = j->req;
    const mm_sched_params *sp = mm_sched_get_params(e->sched); /* the encoder pool's token shape too */
    req->visual = malloc((size_t)req->n_images * (size_t)sp->image_tokens * (size_t)sp->visual_dim * sizeof *req->visual);
    req->image_key = malloc((size_t)req->n_images * sizeof *req->image_key);
    if (!req->visual || !req->image_key) {
        job_fail(e, j, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    j->enc_base = e->next_enc;
    e->next_enc += (uint64_t)req->n_images;
    j->encodes_left = req->n_images;
    e->n_encoding++;
    for (int k = 0; k < req->n_images; k++) {
        mm_status s = mm_encoder_pool_submit(e->p.encoder, j->enc_base + (uint64_t)k, req->image_data[k], req->image_len[k],
                                             req->image_key[k]);
        if (s != MM_OK) { /* INVALID: over pool_max_message_mb, which no retry changes */
            char msg[512];
            snprintf(msg, sizeof msg, "%s.image: %s", req->image_where[k], mm_error_without_location(mm_error_last()));
            job_fail(e, j, s == MM_ERR_INVALID ? GRPC_STATUS_INVALID_ARGUMENT : GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
            return;
        }
        free(req->image_data[k]);
        req->image_data[k] = NULL;
    }
}

/* Takes the encoder's results: visual tokens go into their request; a refused image
 * fails its request with INVALID_ARGUMENT naming the part. Returns how many came. */
static int take_encodes(mm_engine *e) {
    if (!e->p.encoder) return 0;
    const mm_sched_params *sp = mm_sched_get_params(e->sched);
    int n = 0;
    mm_encode_result res;
    while (mm_encoder_pool_poll(e->p.encoder, &res)) {
        n++;
        job *j = NULL;
        for (int i = 0; i < e->n_jobs && !j; i++) {
            job *c = e->jobs[i];
            if (c->encodes_left > 0 && res.job_id >= c->enc_base && res.job_id < c->enc_base + (uint64_t)c->req->n_images)
                j = c;
        }
        if (!j) { /* late: its request is gone */
            free(res.tokens);
            continue;
        }
        int k = (int)(res.job_id - j->enc_base);
        if (res.status != MM_OK) {
            char msg[512];
            int bad_input = res.status == MM_ERR_FORMAT || res.status == MM_ERR_INVALID || res.status == MM_ERR_UNSUPPORTED;
            snprintf(msg, sizeof msg, "%s.image: %s%s", j->req->image_where[k],
                     bad_input ? "cannot use this image: " : "encoder failed: ", res.error);
            job_fail(e, j, bad_input ? GRPC_STATUS_INVALID_ARGUMENT : GRPC_STATUS_INTERNAL, msg);
            continue;
        }
        size_t T_D = (size_t)sp->image_tokens * (size_t)sp->visual_dim;
        memcpy(j->req->visual + (size_t)k * T_D, res.tokens, T_D * sizeof *res.tokens);
        free(res.tokens);
        if (--j->encodes_left == 0) {
            e->n_encoding--;
            mm_trace_request(e->p.trace, "encoded", j->req->call_id);
            job_admit(e, j);
        }
    }
    return n;
}

static void submit(mm_engine *e, mm_request *req) {
    char msg[512];
    if (e->failed || *e->p.stop_flag) {
        reply_error(e, req->call_id, GRPC_STATUS_UNAVAILABLE,
                    e->failed ? "pipeline stage unavailable" : "the server is shutting down");
        mm_request_free(req);
        return;
    }
    mm_sched_stats st;
    mm_sched_get_stats(e->sched, &st);
    if (!mm_sched_can_accept(e->sched) || st.waiting + e->n_encoding >= e->p.cfg->max_queue) {
        snprintf(msg, sizeof msg, "the queue is full (%d requests waiting)", e->p.cfg->max_queue);
        reply_error(e, req->call_id, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
        mm_request_free(req);
        return;
    }
    if (req->n_images > 0 && !e->p.encoder) { /* validation rules this out; never crash on it */
        reply_error(e, req->call_id, GRPC_STATUS_UNIMPLEMENTED, "this server has no vision encoder");
        mm_request_free(req);
        return;
    }
    job *j = calloc(1, sizeof *j);
    if (j && e->n_jobs == e->cap_jobs) {
        int cap = e->cap_jobs ? e->cap_jobs * 2 : 64;
        job **js = realloc(e->jobs, (size_t)cap * sizeof *js);
        if (js) e->jobs = js, e->cap_jobs = cap;
    }
    if (!j || e->n_jobs == e->cap_jobs) {
        free(j);
        reply_error(e, req->call_id, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        mm_request_free(req);
        return;
    }
    j->req = req;
    mm_detok_init(&j->detok, 1);
    for (int k = 0; k < req->n_stop; k++)
        if (strlen(req->stop[k]) > j->max_stop_len) j->max_stop_len = strlen(req->stop[k]);
    e->jobs[e->n_jobs++] = j;
    mm_trace_request(e->p.trace, "arrive", req->call_id);
    if (req->n_images > 0) job_encode(e, j);
    else job_admit(e, j);
}

/* Drains the request socket; returns how many messages were handled. */
static int take_messages(mm_engine *e) {
    int n = 0;
    for (;;) {
        mm_msg m;
        int got = zmq_recv(e->requests, &m, sizeof m, ZMQ_DONTWAIT);
        if (got != (int)sizeof m) return n;
        n++;
        switch (m.type) {
        case MM_MSG_SUBMIT: submit(e, m.req); break;
        case MM_MSG_CANCEL: {
            job *j = job_find(e, m.call_id, NULL);
            if (j) job_drop(e, j); /* the client is gone: nobody to answer */
            break;
        }
        case MM_MSG_INFO: send_info(e, m.call_id); break;
        }
    }
}

/* Why j cannot progress: it waits on a pool that has no worker now (NULL: it can). */
static const char *pool_missing(mm_engine *e, const job *j) {
    if (j->encodes_left > 0 && mm_encoder_pool_workers_alive(e->p.encoder) == 0) return "no encoder worker is available";
    if (j->decodes_left > 0 && mm_decoder_pool_workers_alive(e->p.decoder) == 0) return "no decoder worker is available";
    return NULL;
}

/* How long before its deadline a request stuck on an empty pool gets its UNAVAILABLE:
 * at the deadline itself gRPC has already ended the call with DEADLINE_EXCEEDED, so the
 * answer must leave early enough to cross the reply thread and the network first. */
#define POOL_WAIT_ANSWER_MARGIN_MS 250.0

/* Deadlines, and requests stuck on an empty pool: those wait for a worker up to their
 * deadline (less the margin above; pool_job_timeout_ms without one) and then fail with
 * UNAVAILABLE. */
static void expire_deadlines(mm_engine *e) {
    double t = mm_now_ms();
    for (int i = e->n_jobs - 1; i >= 0; i--) {
        job *j = e->jobs[i];
        const char *missing = pool_missing(e, j);
        if (!missing) j->t_pool_wait = 0;
        else if (j->t_pool_wait == 0) j->t_pool_wait = t;
        int late = j->req->deadline_ms > 0 && t >= j->req->deadline_ms;
        int pool_wait_over = j->req->deadline_ms > 0 && t >= j->req->deadline_ms - POOL_WAIT_ANSWER_MARGIN_MS;
        if (missing && (pool_wait_over || t - j->t_pool_wait >= e->p.cfg->pool_job_timeout_ms))
            job_fail(e, j, GRPC_STATUS_UNAVAILABLE, missing);
        else if (late)
            job_fail(e, j, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded");
    }
}

/* ---------------------------------------------------------------- metrics */

/* The gauges and the mirrored counters, at most every GAUGE_PERIOD_MS. */
#define GAUGE_PERIOD_MS 50
static void update_gauges(mm_engine *e) {
    mm_metrics *m = e->p.metrics;
    double t = mm_now_ms();
    if (!m || t - e->t_gauges < GAUGE_PERIOD_MS) return;
    e->t_gauges = t;
    mm_sched_stats st;
    mm_sched_get_stats(e->sched, &st);
    mm_metrics_set(m, MM_METRIC_QUEUE_DEPTH, 0, st.waiting + e->n_encoding);
    mm_metrics_set(m, MM_METRIC_RUNNING_SEQUENCES, 0, st.running);
    mm_metrics_set(m, MM_METRIC_KV_BLOCKS_USED, 0, st.kv_blocks_used);
    mm_metrics_set(m, MM_METRIC_KV_BLOCKS_CAPACITY, 0, st.kv_blocks_total);
    mm_metrics_set(m, MM_METRIC_KV_BLOCKS_CACHED, 0, st.kv_blocks_cached);
    mm_metrics_set(m, MM_METRIC_PREFIX_CACHE_QUERIES_TOTAL, 0, (double)st.prefix_queries);
    mm_metrics_set(m, MM_METRIC_PREFIX_CACHE_HITS_TOTAL, 0, (double)st.prefix_hits);
    mm_metrics_set(m, MM_METRIC_PREFIX_CACHE_EVICTIONS_TOTAL, 0, (double)st.prefix_evictions);
    for (int k = 0; k < mm_mpi_driver_n_stages(e->p.drv); k++)
        mm_metrics_set(m, MM_METRIC_STAGE_BUSY_SECONDS_TOTAL, k, mm_mpi_driver_stage(e->p.drv, k)->busy_ms * 1e-3);
    if (e->p.encoder) {
        mm_encoder_pool_stats es;
        mm_encoder_pool_get_stats(e->p.encoder, &es);
        mm_metrics_set(m, MM_METRIC_POOL_WORKERS, MM_METRICS_POOL_ENCODE, es.pool.workers_alive);
        mm_metrics_set(m, MM_METRIC_POOL_JOBS_IN_FLIGHT, MM_METRICS_POOL_ENCODE, es.pool.jobs_in_flight);
        mm_metrics_set(m, MM_METRIC_POOL_REDISPATCHES_TOTAL, MM_METRICS_POOL_ENCODE, (double)es.pool.redispatches);
        mm_metrics_set(m, MM_METRIC_EMBED_CACHE_HITS_TOTAL, 0, (double)es.cache_hits);
        mm_metrics_set(m, MM_METRIC_EMBED_CACHE_MISSES_TOTAL, 0, (double)es.cache_misses);
    }
    if (e->p.decoder) {
        mm_pool_stats ds;
        mm_decoder_pool_get_stats(e->p.decoder, &ds);
        mm_metrics_set(m, MM_METRIC_POOL_WORKERS, MM_METRICS_POOL_DECODE, ds.workers_alive);
        mm_metrics_set(m, MM_METRIC_POOL_JOBS_IN_FLIGHT, MM_METRICS_POOL_DECODE, ds.jobs_in_flight);
        mm_metrics_set(m, MM_METRIC_POOL_REDISPATCHES_TOTAL, MM_METRICS_POOL_DECODE, (double)ds.redispatches);
    }
}

/* One line every log_stats_ms while there is work (as vLLM's periodic stats): what runs
 * and waits, prompt rows admitted and tokens generated per second since the last line,
 * KV use, the pools' backlog. Nothing while idle. */
static void report_throughput(mm_engine *e) {
    double t = mm_now_ms();
    if (e->t_report == 0) e->t_report = t;
    if (!e->p.cfg->log_stats_ms || t - e->t_report < e->p.cfg->log_stats_ms) return;
    mm_sched_stats st;
    mm_sched_get_stats(e->sched, &st);
    double dt = (t - e->t_report) * 1e-3;
    int busy = st.running + st.waiting + e->n_encoding + e->n_decodes > 0 || e->report_generated > 0;
    if (busy) {
        char pools[160] = "";
        if (e->p.encoder) {
            mm_encoder_pool_stats es;
            mm_encoder_pool_get_stats(e->p.encoder, &es);
            snprintf(pools, sizeof pools, ", encode pool %d jobs on %d workers", es.pool.jobs_in_flight, es.pool.workers_alive);
        }
        if (e->p.decoder) {
            mm_pool_stats ds;
            mm_decoder_pool_get_stats(e->p.decoder, &ds);
            size_t n = strlen(pools);
            snprintf(pools + n, sizeof pools - n, ", decode pool %d jobs on %d workers", ds.jobs_in_flight, ds.workers_alive);
        }
        LOG_INFO("running %d, waiting %d (+%d encoding), prompt %.1f tok/s, generation %.1f tok/s, KV %d/%d blocks "
                 "(%.1f%%)%s",
                 st.running, st.waiting, e->n_encoding, (double)e->report_prompt / dt, (double)e->report_generated / dt,
                 st.kv_blocks_used, st.kv_blocks_total,
                 st.kv_blocks_total ? 100.0 * st.kv_blocks_used / st.kv_blocks_total : 0.0, pools);
    }
    e->t_report = t, e->report_prompt = 0, e->report_generated = 0;
}

/* ---------------------------------------------------------------- loop */

mm_status mm_engine_init(const mm_engine_params *p, mm_engine **out) {
    mm_engine *e = calloc(1, sizeof *e);
    CHECK(CHECK_ALLOC(e));
    e->p = *p;
    const mm_serve_config *c = p->cfg;
    mm_sched_params sp = {
        .max_batch_tokens = c->max_batch_tokens, .max_batch_seqs = c->max_batch_seqs,
        .max_in_flight = mm_mpi_driver_n_stages(p->drv), .max_waiting = c->max_queue, .kv_blocks = c->kv_blocks,
        .kv_block_size = c->kv_block_size, .max_context = mm_engine_max_context(c, p->llm),
        .image_start_id = mm_mpi_driver_has_vision_head(p->drv) ? p->image_start_id : -1, .image_tokens = p->image_tokens,
        .visual_dim = mm_mpi_driver_visual_dim(p->drv), .prefix_cache = c->prefix_cache};
    sp.n_eos = p->llm->n_eos < MM_SCHED_MAX_EOS ? p->llm->n_eos : MM_SCHED_MAX_EOS;
    memcpy(sp.eos_ids, p->llm->eos_ids, (size_t)sp.n_eos * sizeof *sp.eos_ids);
    mm_status s = mm_sched_init(&sp, &e->sched);
    if (s == MM_OK) {
        e->requests = zmq_socket(p->zmq_ctx, ZMQ_PULL);
        e->replies = zmq_socket(p->zmq_ctx, ZMQ_PUSH);
        e->http_replies = zmq_socket(p->zmq_ctx, ZMQ_PUSH);
        int unbounded = 0; /* the reply queues never block the scheduler (send_reply) */
        if (!e->requests || !e->replies || !e->http_replies ||
            zmq_setsockopt(e->replies, ZMQ_SNDHWM, &unbounded, sizeof unbounded) ||
            zmq_setsockopt(e->http_replies, ZMQ_SNDHWM, &unbounded, sizeof unbounded) ||
            zmq_bind(e->requests, MM_ENDPOINT_REQUESTS) || zmq_bind(e->replies, MM_ENDPOINT_REPLIES) ||
            zmq_bind(e->http_replies, MM_ENDPOINT_HTTP_REPLIES))
            s = MM_ERROR(MM_ERR_IO, "inproc sockets: %s", zmq_strerror(zmq_errno()));
    }
    if (s != MM_OK) {
        mm_engine_free(e);
        return s;
    }
    *out = e;
    return MM_OK;
}

/* Drains the pipeline after a stop request: in-flight steps come back, then the
 * stages are told to stop. */
static void stop_pipeline(mm_engine *e) {
    double t0 = mm_now_ms();
    while (e->n_fifo > 0 && mm_now_ms() - t0 < 5000 && !*e->p.stage_failed) {
        Metamorph__Internal__StepResult *res;
        if (mm_mpi_driver_poll(e->p.drv, &res) != MM_OK) break;
        if (!res) {
            struct timespec t = {0, 200000};
            nanosleep(&t, NULL);
            continue;
        }
        if (res->error[0] || process_result(e, res) != MM_OK) e->n_fifo = 0;
        metamorph__internal__step_result__free_unpacked(res, NULL);
    }
    mm_sched_abort_in_flight(e->sched);
    e->n_fifo = 0;
    if (mm_mpi_driver_shutdown(e->p.drv) != MM_OK) LOG_ERROR("stopping the stages: %s", mm_error_last());
}

int mm_engine_run(mm_engine *e) {
    int spins = 0;
    for (;;) {
        int work = take_messages(e) + take_encodes(e) + take_decodes(e);
        if (*e->p.stop_flag) {
            LOG_INFO("stopping: failing %d requests", e->n_jobs);
            while (e->n_jobs > 0) job_fail(e, e->jobs[0], GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
            atomic_store(e->p.serving, 0);
            if (e->failed) return 1;
            stop_pipeline(e);
            return 0;
        }
        if (!e->failed) {
            mm_status s = MM_OK;
            for (;;) {
                Metamorph__Internal__StepResult *res;
                s = mm_mpi_driver_poll(e->p.drv, &res);
                if (s != MM_OK || !res) break;
                work++;
                if (res->error[0]) {
                    pipeline_failed(e, res->error);
                } else {
                    s = process_result(e, res);
                }
                metamorph__internal__step_result__free_unpacked(res, NULL);
                if (s != MM_OK || e->failed) break;
            }
            if (s == MM_OK && !e->failed) s = schedule(e);
            if (s != MM_OK) pipeline_failed(e, mm_error_last());
            else if (*e->p.stage_failed) pipeline_failed(e, "a process of the MPI job died");
            else if (e->n_fifo > 0 && mm_now_ms() - e->fifo[0].t_sent_ms > e->p.cfg->stage_timeout_ms)
                pipeline_failed(e, "a step took longer than stage_timeout_ms");
        }
        expire_deadlines(e);
        update_gauges(e);
        report_throughput(e);
        if (e->failed && mm_now_ms() - e->failed_at_ms >= e->p.cfg->fail_exit_ms) return 1;
        if (work) {
            spins = 0;
            continue;
        }
        if (e->n_fifo > 0) { /* results due soon: short sleeps, no spinning */
            struct timespec t = {0, spins++ < 50 ? 20000 : 100000};
            nanosleep(&t, NULL);
            continue;
        }
        /* wake for a request or a pool message (the pools' heartbeats need a turn every
         * IDLE_POLL_MS at least) */
        zmq_pollitem_t it[3] = {{e->requests, 0, ZMQ_POLLIN, 0}};
        int n_it = 1;
        if (e->p.encoder) it[n_it++] = (zmq_pollitem_t){mm_encoder_pool_socket(e->p.encoder), 0, ZMQ_POLLIN, 0};
        if (e->p.decoder) it[n_it++] = (zmq_pollitem_t){mm_decoder_pool_socket(e->p.decoder), 0, ZMQ_POLLIN, 0};
        zmq_poll(it, n_it, e->n_jobs > 0 ? 1 : IDLE_POLL_MS);
    }
}

void mm_engine_stop_replies(mm_engine *e, int http_door) {
    mm_reply *r = reply_new(MM_REPLY_STOP, 0);
    if (r) send_reply_to(e->replies, r);
    if (http_door && (r = reply_new(MM_REPLY_STOP, MM_CALL_ID_HTTP))) send_reply_to(e->http_replies, r);
}

void mm_engine_free(mm_engine *e) {
    if (!e) return;
    while (e->n_jobs > 0) job_drop(e, e->jobs[0]);
    free(e->jobs);
    free(e->decodes);
    mm_sched_free(e->sched);
    if (e->requests) zmq_close(e->requests);
    if (e->replies) zmq_close(e->replies);
    if (e->http_replies) zmq_close(e->http_replies);
    free(e);
}
