/* The vision encoder pool (encoder_pool.h): a layer over the broker, as decoder_pool.c is.
 * A submitted image is answered, in this order, from the embedding cache, by joining an
 * encode of the same bytes already in flight ("pending"), or by a new broker job. The
 * broker's job ids are this file's own (one per distinct image in flight); each pending
 * encode lists the caller job ids waiting for it. Results are checked for their shape
 * before anyone sees them, so a worker answering with the wrong model is dropped. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "embed_cache.h"
#include "encoder_pool.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pool payloads are little-endian f32 and are used in place"
#endif

typedef struct pending {
    struct pending *next;
    uint8_t key[MM_EMBED_KEY_BYTES];
    uint64_t broker_id;
    uint64_t *waiters;       /* [n_waiters] caller job ids */
    int n_waiters, cap_waiters;
} pending;

typedef struct ready_node {
    struct ready_node *next;
    mm_encode_result r;
} ready_node;

struct mm_encoder_pool {
    mm_pool_broker *broker;
    mm_embed_cache *cache;
    pending *pending;
    ready_node *ready, *ready_tail;
    uint64_t next_broker_id;
    uint64_t coalesced;
    int32_t n_tokens, dim;   /* the shape of every result */
};

static size_t token_floats(const mm_encoder_pool *e) { return (size_t)e->n_tokens * (size_t)e->dim; }

/* The broker's check: [n_tokens, dim] finite f32, as configured. */
static mm_status check_tokens(void *user, const mm_pool_result *r) {
    const mm_encoder_pool *e = user;
    if (r->n_tokens != e->n_tokens || r->dim != e->dim)
        return MM_ERROR(MM_ERR_FORMAT, "tokens [%d, %d], expected [%d, %d]", r->n_tokens, r->dim, e->n_tokens,
                        e->dim);
    if (r->len != token_floats(e) * sizeof(float))
        return MM_ERROR(MM_ERR_FORMAT, "%zu payload bytes for tokens [%d, %d]", r->len, r->n_tokens, r->dim);
    const float *t = (const float *)r->payload;
    for (size_t i = 0; i < token_floats(e); i++)
        if (!isfinite(t[i])) return MM_ERROR(MM_ERR_FORMAT, "token value %zu is not finite", i);
    return MM_OK;
}

static mm_status ready_push(mm_encoder_pool *e, uint64_t job_id, mm_status status, const char *error, float *tokens) {
    ready_node *n = calloc(1, sizeof *n);
    if (!n) {
        free(tokens);
        return MM_ERROR(MM_ERR_NOMEM, "encode result of job %llu", (unsigned long long)job_id);
    }
    n->r.job_id = job_id, n->r.status = status, n->r.tokens = tokens;
    if (error) snprintf(n->r.error, sizeof n->r.error, "%s", error);
    if (e->ready_tail) e->ready_tail->next = n;
    else e->ready = n;
    e->ready_tail = n;
    return MM_OK;
}

static float *copy_tokens(const mm_encoder_pool *e, const float *src) {
    float *t = malloc(token_floats(e) * sizeof *t);
    if (t) memcpy(t, src, token_floats(e) * sizeof *t);
    return t;
}

static pending *pending_by_key(const mm_encoder_pool *e, const uint8_t *key) {
    for (pending *p = e->pending; p; p = p->next)
        if (memcmp(p->key, key, MM_EMBED_KEY_BYTES) == 0) return p;
    return NULL;
}

static mm_status pending_add_waiter(pending *p, uint64_t job_id) {
    if (p->n_waiters == p->cap_waiters) {
        int cap = p->cap_waiters ? 2 * p->cap_waiters : 4;
        uint64_t *grown = realloc(p->waiters, (size_t)cap * sizeof *grown);
        CHECK(CHECK_ALLOC(grown));
        p->waiters = grown, p->cap_waiters = cap;
    }
    p->waiters[p->n_waiters++] = job_id;
    return MM_OK;
}

/* Unlinks p from the pending list and frees it. */
static void pending_free(mm_encoder_pool *e, pending *p) {
    for (pending **q = &e->pending; *q; q = &(*q)->next)
        if (*q == p) {
            *q = p->next;
            break;
        }
    free(p->waiters);
    free(p);
}

mm_status mm_encoder_pool_submit(mm_encoder_pool *e, uint64_t job_id, const uint8_t *data, size_t len,
                                 uint8_t key[MM_EMBED_KEY_BYTES]) {
    CHECK(mm_embed_cache_key(data, len, key));
    const float *cached = mm_embed_cache_get(e->cache, key);
    if (cached) {
        float *t = copy_tokens(e, cached);
        CHECK(CHECK_ALLOC(t));
        return ready_push(e, job_id, MM_OK, NULL, t);
    }
    pending *p = pending_by_key(e, key);
    if (p) {
        CHECK(pending_add_waiter(p, job_id));
        e->coalesced++;
        return MM_OK;
    }
    p = calloc(1, sizeof *p);
    CHECK(CHECK_ALLOC(p));
    memcpy(p->key, key, MM_EMBED_KEY_BYTES);
    p->broker_id = ++e->next_broker_id;
    mm_status s = pending_add_waiter(p, job_id);
    uint8_t *copy = s == MM_OK ? malloc(len ? len : 1) : NULL;
    if (s == MM_OK && !copy) s = MM_ERROR(MM_ERR_NOMEM, "image of %zu bytes", len);
    if (s != MM_OK) {
        free(p->waiters);
        free(p);
        return s;
    }
    memcpy(copy, data, len);
    p->next = e->pending;
    e->pending = p;
    s = mm_pool_broker_submit(e->broker, p->broker_id, NULL, copy, len);
    if (s != MM_OK) pending_free(e, p);
    return s;
}

/* Hands one broker result to every job waiting for it; good tokens also go to the cache. */
static void deliver(mm_encoder_pool *e, mm_pool_result *r) {
    pending *p = e->pending;
    while (p && p->broker_id != r->job_id) p = p->next;
    if (!p) { /* every waiter cancelled meanwhile */
        free(r->payload);
        return;
    }
    float *tokens = (float *)r->payload; /* malloc'd, checked: [n_tokens, dim] */
    if (r->status == MM_OK && mm_embed_cache_put(e->cache, p->key, tokens) != MM_OK)
        LOG_WARN("embedding cache: %s", mm_error_last());
    for (int i = 0; i < p->n_waiters; i++) {
        float *mine = NULL;
        mm_status status = r->status;
        const char *error = r->error;
        if (status == MM_OK) {
            int last = i == p->n_waiters - 1;
            mine = last ? tokens : copy_tokens(e, tokens);
            if (last) tokens = NULL;
            if (!mine) status = MM_ERR_NOMEM, error = "out of memory copying visual tokens";
        }
        if (ready_push(e, p->waiters[i], status, error, mine) != MM_OK)
            LOG_ERROR("encode job %llu lost: %s", (unsigned long long)p->waiters[i], mm_error_last());
    }
    free(tokens);
    pending_free(e, p);
}

int mm_encoder_pool_poll(mm_encoder_pool *e, mm_encode_result *out) {
    if (!e->ready) {
        mm_pool_broker_pump(e->broker, mm_now_ms());
        mm_pool_result r;
        while (mm_pool_broker_poll(e->broker, &r)) deliver(e, &r);
    }
    ready_node *n = e->ready;
    if (!n) return 0;
    e->ready = n->next;
    if (!e->ready) e->ready_tail = NULL;
    *out = n->r;
    free(n);
    return 1;
}

void mm_encoder_pool_cancel(mm_encoder_pool *e, uint64_t job_id) {
    ready_node *prev = NULL;
    for (ready_node *n = e->ready; n; prev = n, n = n->next)
        if (n->r.job_id == job_id) {
            if (prev) prev->next = n->next;
            else e->ready = n->next;
            if (e->ready_tail == n) e->ready_tail = prev;
            free(n->r.tokens);
            free(n);
            return;
        }
    for (pending *p = e->pending; p; p = p->next)
        for (int i = 0; i < p->n_waiters; i++)
            if (p->waiters[i] == job_id) {
                p->waiters[i] = p->waiters[--p->n_waiters];
                if (p->n_waiters == 0) {
                    mm_pool_broker_cancel(e->broker, p->broker_id);
                    pending_free(e, p);
                }
                return;
            }
}

void mm_encoder_pool_free(mm_encoder_pool *e) {
    if (!e) return;
    while (e->pending) pending_free(e, e->pending);
    while (e->ready) {
        ready_node *n = e->ready;
        e->ready = n->next;
        free(n->r.tokens);
        free(n);
    }
    mm_pool_broker_free(e->broker);
    mm_embed_cache_free(e->cache);
    free(e);
}

mm_status mm_encoder_pool_init(const mm_encoder_pool_params *p, mm_encoder_pool **out) {
    if (p->n_tokens <= 0 || p->dim <= 0 || p->embed_cache_mb < 0)
        return MM_ERROR(MM_ERR_INVALID, "encoder pool: tokens [%d, %d], embed_cache_mb %d", p->n_tokens, p->dim,
                        p->embed_cache_mb);
    mm_encoder_pool *e = calloc(1, sizeof *e);
    CHECK(CHECK_ALLOC(e));
    e->n_tokens = p->n_tokens, e->dim = p->dim;
    mm_status s;
    CHECK_GOTO(mm_embed_cache_init((size_t)p->embed_cache_mb << 20, token_floats(e), &e->cache), s, fail);
    CHECK_GOTO(mm_pool_broker_init(&p->pool, "encode", check_tokens, e, &e->broker), s, fail);
    *out = e;
    return MM_OK;
fail:
    mm_encoder_pool_free(e);
    return s;
}

int mm_encoder_pool_workers_alive(const mm_encoder_pool *e) { return mm_pool_broker_workers_alive(e->broker); }

void mm_encoder_pool_get_stats(const mm_encoder_pool *e, mm_encoder_pool_stats *out) {
    mm_embed_cache_stats cs;
    mm_embed_cache_stats_get(e->cache, &cs);
    memset(out, 0, sizeof *out);
    mm_pool_broker_stats(e->broker, &out->pool);
    out->cache_hits = cs.hits, out->cache_misses = cs.misses;
    out->cache_bytes = cs.bytes, out->cache_entries = cs.entries;
    out->coalesced = e->coalesced;
}

void *mm_encoder_pool_socket(const mm_encoder_pool *e) { return mm_pool_broker_socket(e->broker); }
