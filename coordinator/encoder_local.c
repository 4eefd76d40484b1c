/* The vision encoder in-process (encoder.h): one worker thread owns a backend and the
 * SigLIP tower and takes jobs from a FIFO; results wait in a second FIFO until the
 * scheduler thread polls them. It stands in for the encoder pool until that exists,
 * so it must behave like one: asynchronous, cancellable, and no request state here.
 * The maths is model/siglip.c's and the decoding common/image.c's. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/image.h"
#include "common/log.h"
#include "encoder.h"
#include "model/siglip.h"

typedef struct enc_job {
    struct enc_job *next;
    uint64_t job_id;
    uint8_t *data;               /* [len] encoded image */
    size_t len;
    mm_encode_result res;
} enc_job;

typedef struct {
    mm_encoder base;
    mm_encoder_local_params p;
    mm_backend *be;
    mm_siglip *sig;
    float *pixels;               /* [3, S, S] host */
    pthread_t thread;
    int started, stopping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    enc_job *todo, *todo_tail;   /* FIFO of queued jobs */
    enc_job *done, *done_tail;   /* FIFO of results */
    uint64_t running;            /* job on the worker now (0: none) */
    int running_cancelled;
} enc_local;

static void job_free(enc_job *j) {
    free(j->data);
    free(j->res.tokens);
    free(j);
}

static void push(enc_job **head, enc_job **tail, enc_job *j) {
    j->next = NULL;
    if (*tail) (*tail)->next = j;
    else *head = j;
    *tail = j;
}

/* One image -> tokens [n_tokens, dim]. Runs on the worker thread. */
static mm_status encode_one(enc_local *e, const enc_job *j, float *tokens) {
    mm_image_limits lim = {e->p.max_bytes, e->p.max_side, e->p.max_side};
    return mm_siglip_encode_image_bytes(e->sig, j->data, j->len, &lim, e->base.n_tokens, e->pixels, tokens);
}

static void *worker_main(void *arg) {
    enc_local *e = arg;
    const size_t n = (size_t)e->base.n_tokens * (size_t)e->base.dim;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->todo && !e->stopping) pthread_cond_wait(&e->cv, &e->mu);
        if (e->stopping) break;
        enc_job *j = e->todo;
        e->todo = j->next;
        if (!e->todo) e->todo_tail = NULL;
        e->running = j->job_id, e->running_cancelled = 0;
        pthread_mutex_unlock(&e->mu);

        j->res.job_id = j->job_id;
        j->res.tokens = malloc(n * sizeof(float));
        j->res.status = j->res.tokens ? encode_one(e, j, j->res.tokens) : MM_ERROR(MM_ERR_NOMEM, "visual tokens");
        if (j->res.status != MM_OK) {
            LOG_INFO("encode job %llu: %s", (unsigned long long)j->job_id, mm_error_last());
            snprintf(j->res.error, sizeof j->res.error, "%s", mm_error_without_location(mm_error_last()));
            free(j->res.tokens);
            j->res.tokens = NULL;
        }
        free(j->data);
        j->data = NULL;

        pthread_mutex_lock(&e->mu);
        if (e->running_cancelled) job_free(j);
        else push(&e->done, &e->done_tail, j);
        e->running = 0;
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

static mm_status local_submit(mm_encoder *enc, uint64_t job_id, const uint8_t *data, size_t len) {
    enc_local *e = (enc_local *)enc;
    enc_job *j = calloc(1, sizeof *j);
    CHECK(CHECK_ALLOC(j));
    j->data = malloc(len ? len : 1);
    if (!j->data) {
        free(j);
        return MM_ERROR(MM_ERR_NOMEM, "image of %zu bytes", len);
    }
    memcpy(j->data, data, len);
    j->len = len, j->job_id = job_id;
    pthread_mutex_lock(&e->mu);
    push(&e->todo, &e->todo_tail, j);
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return MM_OK;
}

static int local_poll(mm_encoder *enc, mm_encode_result *out) {
    enc_local *e = (enc_local *)enc;
    pthread_mutex_lock(&e->mu);
    enc_job *j = e->done;
    if (j) {
        e->done = j->next;
        if (!e->done) e->done_tail = NULL;
    }
    pthread_mutex_unlock(&e->mu);
    if (!j) return 0;
    *out = j->res;
    j->res.tokens = NULL; /* moved to the caller */
    job_free(j);
    return 1;
}

/* Removes the jobs with job_id from list (head/tail). */
static void drop_from(enc_job **head, enc_job **tail, uint64_t job_id) {
    enc_job *prev = NULL;
    for (enc_job *j = *head; j;) {
        enc_job *next = j->next;
        if (j->job_id == job_id) {
            if (prev) prev->next = next;
            else *head = next;
            if (*tail == j) *tail = prev;
            job_free(j);
        } else {
            prev = j;
        }
        j = next;
    }
}

static void local_cancel(mm_encoder *enc, uint64_t job_id) {
    enc_local *e = (enc_local *)enc;
    pthread_mutex_lock(&e->mu);
    drop_from(&e->todo, &e->todo_tail, job_id);
    drop_from(&e->done, &e->done_tail, job_id);
    if (e->running == job_id) e->running_cancelled = 1;
    pthread_mutex_unlock(&e->mu);
}

static void local_free(mm_encoder *enc) {
    enc_local *e = (enc_local *)enc;
    if (!e) return;
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->stopping = 1;
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    while (e->todo) {
        enc_job *j = e->todo;
        e->todo = j->next;
        job_free(j);
    }
    while (e->done) {
        enc_job *j = e->done;
        e->done = j->next;
        job_free(j);
    }
    free(e->pixels);
    mm_siglip_free(e->sig);
    mm_backend_free(e->be);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

static const mm_encoder_ops LOCAL_OPS = {local_submit, local_poll, local_cancel, local_free};

mm_status mm_encoder_local_init(const mm_encoder_local_params *p, mm_encoder **out) {
    enc_local *e = calloc(1, sizeof *e);
    CHECK(CHECK_ALLOC(e));
    e->base.ops = &LOCAL_OPS;
    e->base.n_tokens = p->n_tokens;
    e->p = *p;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    mm_status s;
    CHECK_GOTO(mm_backend_init(p->backend, p->threads, &e->be), s, fail);
    CHECK_GOTO(mm_siglip_load(p->vision_dir, e->be, &e->sig), s, fail);
    e->base.dim = e->sig->cfg.hidden;
    const size_t S = (size_t)e->sig->cfg.image_size;
    e->pixels = malloc(3 * S * S * sizeof(float));
    CHECK_GOTO(CHECK_ALLOC(e->pixels), s, fail);
    if (pthread_create(&e->thread, NULL, worker_main, e) != 0) {
        s = MM_ERROR(MM_ERR_INTERNAL, "cannot start the encoder thread");
        goto fail;
    }
    e->started = 1;
    LOG_INFO("vision encoder in-process: %s, %d tokens x %d per image", p->vision_dir, e->base.n_tokens, e->base.dim);
    *out = &e->base;
    return MM_OK;
fail:
    local_free(&e->base);
    return s;
}
