/* The broker of one worker pool (pool_broker.h). Jobs live on two lists: `queue` (in
 * dispatch order; re-queued jobs go to the front) and `sent` (in flight, in dispatch
 * order). A job keeps its payload in a zmq_msg_t built over the caller's buffer, and
 * every send is a zmq_msg_copy of it: the bytes are shared, never copied, and stay ours
 * for the next dispatch. A worker that was sent a job keeps a slot for it until it
 * answers, is dropped or starts again, whatever happens to the job meanwhile: a job
 * cancelled or past its timeout leaves a "ghost" entry on `sent` (no payload, no
 * deadline) holding that slot, because the worker is still busy with it and refuses
 * anything over its capacity. A ghost's answer is handed over when its job (same
 * `serial`) is still wanted, and dropped otherwise. Workers are trusted with nothing: a
 * frame that does not parse, a message that has no business coming from a worker, or a
 * result that fails the pool's check drops the worker (its jobs go back to the front of
 * the queue). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/log.h"
#include "pool_broker.h"
#include "proto/internal.pb-c.h"

typedef Metamorph__Internal__PoolHeader pool_header;

enum {
    MAX_FRAMES = 3,          /* routing id, header, payload */
    MAX_CAPACITY = 1024,     /* a READY claiming more is garbage */
    MAX_HEARTBEAT_MS = 60000, /* nor a heartbeat period longer than mm-encoder/mm-decoder allow:
                               * its silence would go unnoticed for liveness times as long */
    MAX_MESSAGES_PER_PUMP = 4096, /* a flooding worker cannot hold the scheduler */
    SOCKET_HWM = 1000,
    SENT_ID_MEMORY = 4096,   /* job ids of the last dispatches: late results are told from made-up ones */
};

typedef struct {
    uint8_t rid[256];        /* [rid_len] routing id */
    size_t rid_len;
    char name[64];           /* for logs */
    int capacity, in_flight; /* in_flight counts cancelled jobs still on the worker */
    double last_heard, last_sent;
    double silence_ms;       /* dead after this long without a message */
    double beat_ms;          /* heartbeat it this often: the shorter of both periods, so it hears us in time */
    double held_until;       /* it answered "busy": no job goes to it before then */
} worker;

/* QUEUED and SENT entries are submitted jobs (one entry each); a GHOST is a copy left on
 * a worker still running a job that was cancelled or timed out there. */
typedef enum { JOB_QUEUED, JOB_SENT, JOB_GHOST } job_state;

typedef struct job {
    struct job *prev, *next;
    uint64_t id;
    uint64_t serial;         /* which submit: a ghost's answer counts for this one only */
    job_state state;
    worker *w;               /* JOB_SENT / JOB_GHOST */
    double deadline;         /* JOB_SENT */
    int timed_out;           /* it left a ghost: dispatch skips the workers holding one */
    int cancel_sent;         /* JOB_GHOST: its worker was told CANCEL */
    mm_pool_job_fields fields;
    zmq_msg_t payload;       /* over the submitted buffer; none on a ghost */
    int has_payload;
} job;

typedef struct {
    job *head, *tail;
    int n;
} job_list;

typedef struct result_node {
    struct result_node *next;
    mm_pool_result r;
} result_node;

struct mm_pool_broker {
    void *sock;
    char pool[16];
    mm_pool_settings s;      /* endpoint not kept */
    size_t max_bytes;        /* max_message_mb in bytes */
    mm_pool_check_fn check;
    void *check_user;
    worker **workers;        /* [n_workers], each malloc'd (jobs point at them) */
    int n_workers, cap_workers;
    job_list queue, sent;
    result_node *ready, *ready_tail;
    uint64_t sent_ids[SENT_ID_MEMORY]; /* ring of the job ids of the last dispatches */
    uint64_t n_sent_ids;
    uint64_t next_serial;
    mm_pool_stats st;
};

/* ------------------------------------------------------------------ job lists */

static void list_remove(job_list *l, job *j) {
    if (j->prev) j->prev->next = j->next;
    else l->head = j->next;
    if (j->next) j->next->prev = j->prev;
    else l->tail = j->prev;
    j->prev = j->next = NULL;
    l->n--;
}

static void list_push_back(job_list *l, job *j) {
    j->next = NULL, j->prev = l->tail;
    if (l->tail) l->tail->next = j;
    else l->head = j;
    l->tail = j;
    l->n++;
}

static void list_push_front(job_list *l, job *j) {
    j->prev = NULL, j->next = l->head;
    if (l->head) l->head->prev = j;
    else l->tail = j;
    l->head = j;
    l->n++;
}

/* The submitted job (queued or sent, not a ghost) with this id, or NULL. */
static job *live_by_id(const mm_pool_broker *b, uint64_t id) {
    for (job *j = b->queue.head; j; j = j->next)
        if (j->id == id) return j;
    for (job *j = b->sent.head; j; j = j->next)
        if (j->id == id && j->state == JOB_SENT) return j;
    return NULL;
}

/* The submitted job of this serial, or NULL when it was answered or cancelled. */
static job *live_by_serial(const mm_pool_broker *b, uint64_t serial) {
    for (job *j = b->queue.head; j; j = j->next)
        if (j->serial == serial) return j;
    for (job *j = b->sent.head; j; j = j->next)
        if (j->serial == serial && j->state == JOB_SENT) return j;
    return NULL;
}

static void job_free(job *j) {
    if (j->has_payload) zmq_msg_close(&j->payload);
    free(j);
}

/* ------------------------------------------------------------------ sending */

static void free_payload(void *data, void *hint) {
    (void)hint;
    free(data);
}

/* Sends [routing id, header (, payload)] to w without waiting. -1 (errno set by ZeroMQ)
 * when the worker cannot take it now: gone (EHOSTUNREACH) or full (EAGAIN). */
static int send_to(mm_pool_broker *b, worker *w, const pool_header *h, job *with_payload, double now) {
    uint8_t buf[512];
    size_t n = metamorph__internal__pool_header__get_packed_size(h);
    if (n > sizeof buf) {
        errno = EMSGSIZE;
        return -1;
    }
    metamorph__internal__pool_header__pack(h, buf);
    if (zmq_send(b->sock, w->rid, w->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return -1;
    if (zmq_send(b->sock, buf, n, (with_payload ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) return -1;
    if (with_payload) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        if (zmq_msg_copy(&copy, &with_payload->payload) != 0 || zmq_msg_send(&copy, b->sock, ZMQ_DONTWAIT) < 0) {
            int err = zmq_errno();
            zmq_msg_close(&copy);
            errno = err;
            return -1;
        }
    }
    w->last_sent = now;
    return 0;
}

static void header_init(const mm_pool_broker *b, pool_header *h, Metamorph__Internal__PoolMsgType type) {
    metamorph__internal__pool_header__init(h);
    h->type = type;
    h->pool = (char *)b->pool;
}

/* Tells g's worker to stop a job nobody wants from it any more (once; without waiting:
 * a CANCEL that cannot go out now is not worth dropping the worker for, the job then
 * merely runs to its end). */
static void send_cancel(mm_pool_broker *b, job *g) {
    if (g->cancel_sent) return;
    g->cancel_sent = 1;
    pool_header h;
    header_init(b, &h, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_CANCEL);
    h.job_id = g->id;
    if (send_to(b, g->w, &h, NULL, mm_now_ms()) != 0)
        LOG_WARN("pool %s: CANCEL of job %llu not sent to worker %s (%s): it runs to its end", b->pool,
                 (unsigned long long)g->id, g->w->name, zmq_strerror(errno));
    else
        b->st.cancels_sent++;
}

/* A sent job nobody wants any more becomes a ghost (its worker's slot stays taken until
 * it answers) and its worker is told CANCEL. */
static void sent_to_ghost(mm_pool_broker *b, job *j) {
    j->state = JOB_GHOST;
    if (j->has_payload) zmq_msg_close(&j->payload);
    j->has_payload = 0;
    send_cancel(b, j);
}

/* Every ghost of this submit is told CANCEL: its job is answered or cancelled. */
static void cancel_ghosts(mm_pool_broker *b, uint64_t serial) {
    for (job *g = b->sent.head; g; g = g->next)
        if (g->state == JOB_GHOST && g->serial == serial) send_cancel(b, g);
}

/* The submitted job j is done (answered or cancelled): a queued one is freed, a sent one
 * left as a ghost on its worker, and its ghosts are told CANCEL. */
static void job_retire(mm_pool_broker *b, job *j) {
    uint64_t serial = j->serial;
    if (j->state == JOB_QUEUED) {
        list_remove(&b->queue, j);
        job_free(j);
    } else {
        sent_to_ghost(b, j);
    }
    cancel_ghosts(b, serial);
}

/* ------------------------------------------------------------------ workers */

static worker *worker_find(const mm_pool_broker *b, const uint8_t *rid, size_t len) {
    for (int i = 0; i < b->n_workers; i++)
        if (b->workers[i]->rid_len == len && memcmp(b->workers[i]->rid, rid, len) == 0) return b->workers[i];
    return NULL;
}

/* Moves w's jobs back to the front of the queue, in their dispatch order; its ghosts
 * are forgotten. */
static void requeue_jobs_of(mm_pool_broker *b, worker *w) {
    for (job *j = b->sent.tail; j;) {
        job *prev = j->prev;
        if (j->w == w) {
            list_remove(&b->sent, j);
            if (j->state == JOB_GHOST) {
                job_free(j);
            } else {
                j->state = JOB_QUEUED, j->w = NULL;
                list_push_front(&b->queue, j);
                b->st.redispatches++;
            }
        }
        j = prev;
    }
    w->in_flight = 0;
}

/* Forgets w (dead, gone or broken) and re-queues its jobs. */
static void worker_drop(mm_pool_broker *b, worker *w) {
    requeue_jobs_of(b, w);
    for (int i = 0; i < b->n_workers; i++)
        if (b->workers[i] == w) {
            b->workers[i] = b->workers[--b->n_workers];
            break;
        }
    b->st.workers_dropped++;
    free(w);
}

/* A protocol violation by the peer rid (w: its entry, NULL when unregistered). */
static void refuse(mm_pool_broker *b, worker *w, const char *why) {
    if (w) {
        LOG_ERROR("pool %s: worker %s dropped: %s", b->pool, w->name, why);
        worker_drop(b, w);
    } else {
        LOG_ERROR("pool %s: message from an unregistered peer ignored: %s", b->pool, why);
    }
}

/* Printable name: the READY's worker field, or the routing id in hex. */
static void worker_name(char *out, size_t cap, const char *claimed, const uint8_t *rid, size_t rid_len) {
    size_t k = 0;
    if (claimed && claimed[0]) {
        for (; claimed[k] && k + 1 < cap; k++) out[k] = (claimed[k] > ' ' && claimed[k] < 127) ? claimed[k] : '?';
    } else {
        for (size_t i = 0; i < rid_len && k + 3 <= cap; i++, k += 2) snprintf(out + k, 3, "%02x", rid[i]);
    }
    out[k] = 0;
}

static void on_ready(mm_pool_broker *b, worker *w, zmq_msg_t *rid, const pool_header *h, double now) {
    char why[160];
    if (strcmp(h->pool, b->pool) != 0) {
        snprintf(why, sizeof why, "READY for pool \"%.32s\"", h->pool);
        refuse(b, w, why);
        return;
    }
    if (h->capacity < 1 || h->capacity > MAX_CAPACITY) {
        snprintf(why, sizeof why, "READY with capacity %d", h->capacity);
        refuse(b, w, why);
        return;
    }
    if (h->heartbeat_ms < 0 || h->heartbeat_ms > MAX_HEARTBEAT_MS) {
        snprintf(why, sizeof why, "READY with heartbeat_ms %d (0..%d)", h->heartbeat_ms, MAX_HEARTBEAT_MS);
        refuse(b, w, why);
        return;
    }
    if (w) {
        /* It started again: whatever it was doing is lost. */
        requeue_jobs_of(b, w);
    } else {
        if (b->n_workers == b->cap_workers) {
            int cap = b->cap_workers ? 2 * b->cap_workers : 8;
            worker **grown = realloc(b->workers, (size_t)cap * sizeof *grown);
            if (!grown) {
                LOG_ERROR("pool %s: out of memory registering a worker", b->pool);
                return;
            }
            b->workers = grown, b->cap_workers = cap;
        }
        w = calloc(1, sizeof *w);
        if (!w) {
            LOG_ERROR("pool %s: out of memory registering a worker", b->pool);
            return;
        }
        w->rid_len = zmq_msg_size(rid);
        memcpy(w->rid, zmq_msg_data(rid), w->rid_len);
        b->workers[b->n_workers++] = w;
    }
    worker_name(w->name, sizeof w->name, h->worker, w->rid, w->rid_len);
    w->capacity = h->capacity;
    int32_t theirs = h->heartbeat_ms > 0 ? h->heartbeat_ms : b->s.heartbeat_ms;
    w->silence_ms = (double)b->s.liveness * (theirs > b->s.heartbeat_ms ? theirs : b->s.heartbeat_ms);
    w->beat_ms = theirs < b->s.heartbeat_ms ? theirs : b->s.heartbeat_ms;
    w->last_heard = now;
    w->last_sent = 0; /* heartbeat it this pump: it learns that we hear it */
    LOG_INFO("pool %s: worker %s ready, capacity %d", b->pool, w->name, w->capacity);
}

/* ------------------------------------------------------------------ results */

static void ready_push(mm_pool_broker *b, result_node *n) {
    n->next = NULL;
    if (b->ready_tail) b->ready_tail->next = n;
    else b->ready = n;
    b->ready_tail = n;
}

/* w's entry for job id: the one it was sent (JOB_SENT) before any ghost. */
static job *entry_of(const mm_pool_broker *b, const worker *w, uint64_t id) {
    job *ghost = NULL;
    for (job *j = b->sent.head; j; j = j->next)
        if (j->id == id && j->w == w) {
            if (j->state == JOB_SENT) return j;
            if (!ghost) ghost = j;
        }
    return ghost;
}

static int was_dispatched(const mm_pool_broker *b, uint64_t id) {
    uint64_t n = b->n_sent_ids < SENT_ID_MEMORY ? b->n_sent_ids : SENT_ID_MEMORY;
    for (uint64_t i = 0; i < n; i++)
        if (b->sent_ids[i] == id) return 1;
    return 0;
}

/* A worker answered "busy" for a job it never took: no verdict on the job. A live one
 * goes back to the front of the queue; the worker gets no job for a heartbeat period
 * (it is fuller than its slots here say, e.g. still on jobs from before a reconnect). */
static void on_busy(mm_pool_broker *b, worker *w, job *e, const char *why, double now) {
    list_remove(&b->sent, e);
    w->in_flight--;
    w->held_until = now + w->beat_ms;
    if (e->state == JOB_GHOST) {
        job_free(e);
        b->st.dropped_results++;
        return;
    }
    LOG_WARN("pool %s: worker %s refused job %llu (%s): queued again", b->pool, w->name, (unsigned long long)e->id,
             why);
    e->state = JOB_QUEUED, e->w = NULL;
    list_push_front(&b->queue, e);
    b->st.redispatches++;
}

static void on_result(mm_pool_broker *b, worker *w, const pool_header *h, zmq_msg_t *payload, double now) {
    job *e = entry_of(b, w, h->job_id);
    if (!e) {
        b->st.dropped_results++;
        if (was_dispatched(b, h->job_id)) {
            LOG_WARN("pool %s: late result for job %llu from worker %s dropped (answered or cancelled)", b->pool,
                     (unsigned long long)h->job_id, w->name);
        } else {
            char why[96];
            snprintf(why, sizeof why, "result for job %llu, which was never sent", (unsigned long long)h->job_id);
            refuse(b, w, why);
        }
        return;
    }
    if (h->error[0] && h->error_status == MM_ERR_BUSY) {
        on_busy(b, w, e, h->error, now);
        return;
    }
    job *target = e; /* the submitted job this answer is for */
    if (e->state == JOB_GHOST) {
        /* The worker is done with a job cancelled or timed out there: its slot frees. The
         * answer still counts while that job is wanted (a "cancelled" one never does). */
        target = h->error[0] && h->error_status == MM_ERR_CANCELLED ? NULL : live_by_serial(b, e->serial);
        list_remove(&b->sent, e);
        w->in_flight--;
        job_free(e);
        if (!target) {
            b->st.dropped_results++;
            return;
        }
    } else if (h->error[0] && h->error_status == MM_ERR_CANCELLED) {
        /* Stopped without a CANCEL: no verdict on the job, which must not fail its request. */
        refuse(b, w, "\"cancelled\" for a job that was not cancelled");
        return;
    }
    result_node *n = calloc(1, sizeof *n);
    if (!n) {
        LOG_ERROR("pool %s: out of memory taking the result of job %llu; it will be sent again", b->pool,
                  (unsigned long long)h->job_id);
        return;
    }
    mm_pool_result *r = &n->r;
    r->job_id = h->job_id;
    r->n_tokens = h->n_tokens, r->dim = h->dim, r->width = h->width, r->height = h->height;
    if (h->error[0]) {
        r->status = (h->error_status > MM_OK && h->error_status <= MM_STATUS_LAST) ? (mm_status)h->error_status
                                                                                   : MM_ERR_INTERNAL;
        snprintf(r->error, sizeof r->error, "%s", h->error);
    } else {
        if (!payload) {
            free(n);
            refuse(b, w, "RESULT without an error and without a payload");
            return;
        }
        r->len = zmq_msg_size(payload);
        r->payload = malloc(r->len ? r->len : 1);
        if (!r->payload) {
            free(n);
            LOG_ERROR("pool %s: out of memory (%zu bytes) taking the result of job %llu; it will be sent again",
                      b->pool, zmq_msg_size(payload), (unsigned long long)h->job_id);
            return;
        }
        memcpy(r->payload, zmq_msg_data(payload), r->len);
        if (b->check && b->check(b->check_user, r) != MM_OK) {
            char why[512];
            snprintf(why, sizeof why, "result of job %llu refused: %s", (unsigned long long)h->job_id, mm_error_last());
            free(r->payload);
            free(n);
            refuse(b, w, why);
            return;
        }
    }
    if (target == e) {
        uint64_t serial = e->serial;
        list_remove(&b->sent, e);
        w->in_flight--;
        job_free(e);
        cancel_ghosts(b, serial);
    } else {
        job_retire(b, target); /* queued again, or sent to another worker meanwhile */
    }
    ready_push(b, n);
}

/* ------------------------------------------------------------------ receiving */

/* One whole message: parts[0] routing id, parts[1] header, parts[2] payload (n_parts 3). */
static void on_message(mm_pool_broker *b, zmq_msg_t *parts, int n_parts, int too_many, double now) {
    worker *w = worker_find(b, zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]));
    if (too_many || n_parts < 2) {
        refuse(b, w, too_many ? "more than 2 frames" : "no header frame");
        return;
    }
    pool_header *h = metamorph__internal__pool_header__unpack(NULL, zmq_msg_size(&parts[1]), zmq_msg_data(&parts[1]));
    if (!h) {
        refuse(b, w, "header frame does not parse");
        return;
    }
    zmq_msg_t *payload = n_parts == 3 ? &parts[2] : NULL;
    if (payload && h->type != METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_RESULT) {
        refuse(b, w, "a payload frame on a message that carries none");
    } else if (payload && zmq_msg_size(payload) > b->max_bytes) {
        refuse(b, w, "payload over pool_max_message_mb");
    } else if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_READY) {
        on_ready(b, w, &parts[0], h, now);
    } else if (!w) {
        /* Not registered (never READY, or dropped): it gets nothing until it says READY. */
        if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_RESULT) b->st.dropped_results++;
        if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT) /* it will notice our silence */
            LOG_DEBUG("pool %s: heartbeat from an unregistered peer ignored", b->pool);
        else
            LOG_WARN("pool %s: message type %d from an unregistered peer ignored (it must send READY)", b->pool,
                     (int)h->type);
    } else if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT) {
        w->last_heard = now;
    } else if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_RESULT) {
        w->last_heard = now;
        on_result(b, w, h, payload, now);
    } else if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_BYE) {
        LOG_INFO("pool %s: worker %s left (%d jobs go elsewhere)", b->pool, w->name, w->in_flight);
        worker_drop(b, w);
    } else {
        char why[64];
        snprintf(why, sizeof why, "message type %d from a worker", (int)h->type);
        refuse(b, w, why);
    }
    metamorph__internal__pool_header__free_unpacked(h, NULL);
}

static void receive_all(mm_pool_broker *b, double now) {
    for (int m = 0; m < MAX_MESSAGES_PER_PUMP; m++) {
        zmq_msg_t parts[MAX_FRAMES];
        int n = 0, too_many = 0, more = 1;
        while (more) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, b->sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&part);
                /* Nothing waiting (EAGAIN before the first frame); the frames of one message
                 * arrive together, so a failure later cannot leave half a message. */
                break;
            }
            more = zmq_msg_more(&part);
            if (n < MAX_FRAMES) parts[n++] = part;
            else too_many = 1, zmq_msg_close(&part);
        }
        if (n == 0) return;
        on_message(b, parts, n, too_many, now);
        for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
    }
}

/* ------------------------------------------------------------------ timers, dispatch */

static void drop_silent_workers(mm_pool_broker *b, double now) {
    for (int i = b->n_workers - 1; i >= 0; i--) {
        worker *w = b->workers[i];
        if (now - w->last_heard > w->silence_ms) {
            LOG_ERROR("pool %s: worker %s silent for %.0f ms: dead (%d jobs go elsewhere)", b->pool, w->name,
                      now - w->last_heard, w->in_flight);
            worker_drop(b, w);
        }
    }
}

/* Sent jobs past their deadline go back to the front of the queue, for another worker;
 * each leaves a ghost holding its worker's slot, since that worker is still on it. */
static void expire_jobs(mm_pool_broker *b, double now) {
    for (job *j = b->sent.tail; j;) {
        job *prev = j->prev;
        if (j->state == JOB_SENT && now >= j->deadline) {
            LOG_WARN("pool %s: job %llu unanswered by worker %s after %d ms: queued again for another worker",
                     b->pool, (unsigned long long)j->id, j->w->name, b->s.job_timeout_ms);
            job *g = calloc(1, sizeof *g);
            if (g) {
                g->id = j->id, g->serial = j->serial, g->state = JOB_GHOST, g->w = j->w;
                list_push_back(&b->sent, g); /* behind the tail this walk started from */
            } else {
                j->w->in_flight--; /* out of memory: the slot is given back instead */
            }
            list_remove(&b->sent, j);
            j->state = JOB_QUEUED, j->w = NULL, j->timed_out = 1;
            list_push_front(&b->queue, j);
            b->st.redispatches++;
        }
        j = prev;
    }
}

/* w holds a ghost of submit `serial` (it is running that job already). */
static int holds_ghost(const mm_pool_broker *b, const worker *w, uint64_t serial) {
    for (const job *g = b->sent.head; g; g = g->next)
        if (g->state == JOB_GHOST && g->w == w && g->serial == serial) return 1;
    return 0;
}

/* The worker with a free slot and the lowest in_flight/capacity (ties: most free slots),
 * among those not running j already. */
static worker *least_loaded(const mm_pool_broker *b, const job *j, double now) {
    worker *best = NULL;
    for (int i = 0; i < b->n_workers; i++) {
        worker *w = b->workers[i];
        if (w->in_flight >= w->capacity || now < w->held_until) continue;
        if (j->timed_out && holds_ghost(b, w, j->serial)) continue;
        if (!best) {
            best = w;
            continue;
        }
        long lhs = (long)w->in_flight * best->capacity, rhs = (long)best->in_flight * w->capacity;
        if (lhs < rhs || (lhs == rhs && w->capacity - w->in_flight > best->capacity - best->in_flight)) best = w;
    }
    return best;
}

static void dispatch(mm_pool_broker *b, double now) {
    for (job *j = b->queue.head, *next; j; j = next) {
        next = j->next;
        worker *w = least_loaded(b, j, now);
        if (!w && !j->timed_out) break; /* no free slot anywhere */
        if (!w) continue;                  /* free slots only on workers running it already */
        pool_header h;
        header_init(b, &h, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB);
        h.job_id = j->id;
        h.n_tokens = j->fields.n_tokens, h.dim = j->fields.dim;
        h.steps = j->fields.steps, h.guidance = j->fields.guidance, h.seed = j->fields.seed;
        h.sampler = j->fields.sampler;
        if (send_to(b, w, &h, j, now) != 0) {
            LOG_ERROR("pool %s: worker %s cannot take job %llu (%s): dropped", b->pool, w->name,
                      (unsigned long long)j->id, zmq_strerror(errno));
            worker_drop(b, w);
            next = b->queue.head; /* its jobs went to the front */
            continue;
        }
        list_remove(&b->queue, j);
        j->state = JOB_SENT, j->w = w, j->deadline = now + b->s.job_timeout_ms;
        list_push_back(&b->sent, j);
        w->in_flight++;
        b->st.jobs_sent++;
        b->sent_ids[b->n_sent_ids++ % SENT_ID_MEMORY] = j->id;
    }
}

static void send_heartbeats(mm_pool_broker *b, double now) {
    pool_header h;
    header_init(b, &h, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT);
    for (int i = b->n_workers - 1; i >= 0; i--) {
        worker *w = b->workers[i];
        if (now - w->last_sent < w->beat_ms) continue;
        if (send_to(b, w, &h, NULL, now) != 0) {
            LOG_ERROR("pool %s: worker %s cannot take a heartbeat (%s): dropped", b->pool, w->name,
                      zmq_strerror(errno));
            worker_drop(b, w);
        }
    }
}

void mm_pool_broker_pump(mm_pool_broker *b, double now_ms) {
    receive_all(b, now_ms);
    drop_silent_workers(b, now_ms);
    expire_jobs(b, now_ms);
    dispatch(b, now_ms);
    send_heartbeats(b, now_ms);
}

/* ------------------------------------------------------------------ API */

mm_status mm_pool_broker_init(const mm_pool_settings *s, const char *pool, mm_pool_check_fn check, void *check_user,
                              mm_pool_broker **out) {
    if (!s->zmq_ctx || !s->endpoint || !s->endpoint[0])
        return MM_ERROR(MM_ERR_INVALID, "pool %s: no ZeroMQ context or endpoint", pool);
    if (s->heartbeat_ms <= 0 || s->liveness <= 0 || s->job_timeout_ms <= 0 || s->max_message_mb <= 0)
        return MM_ERROR(MM_ERR_INVALID, "pool %s: heartbeat_ms %d, liveness %d, job_timeout_ms %d, max_message_mb %d must be > 0",
                        pool, s->heartbeat_ms, s->liveness, s->job_timeout_ms, s->max_message_mb);
    if (strlen(pool) >= sizeof(((mm_pool_broker *)0)->pool)) return MM_ERROR(MM_ERR_INVALID, "pool name %s", pool);
    mm_pool_broker *b = calloc(1, sizeof *b);
    CHECK(CHECK_ALLOC(b));
    snprintf(b->pool, sizeof b->pool, "%s", pool);
    b->s = *s;
    b->s.endpoint = NULL, b->s.curve_secret = NULL; /* used here only */
    b->max_bytes = (size_t)s->max_message_mb << 20;
    b->check = check, b->check_user = check_user;
    b->sock = zmq_socket(s->zmq_ctx, ZMQ_ROUTER);
    int one = 1, zero = 0, hwm = SOCKET_HWM;
    int64_t max_msg = (int64_t)b->max_bytes;
    if (!b->sock || zmq_setsockopt(b->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
        zmq_setsockopt(b->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof one) ||
        zmq_setsockopt(b->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(b->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) || zmq_setsockopt(b->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(b->sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg) ||
        (s->curve_secret && (zmq_setsockopt(b->sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
                             zmq_setsockopt(b->sock, ZMQ_CURVE_SECRETKEY, s->curve_secret, strlen(s->curve_secret)) ||
                             zmq_setsockopt(b->sock, ZMQ_ZAP_DOMAIN, "metamorph-pools", 15))) ||
        zmq_bind(b->sock, s->endpoint)) {
        mm_status st = MM_ERROR(MM_ERR_IO, "pool %s: ROUTER on %s: %s", pool, s->endpoint, zmq_strerror(zmq_errno()));
        mm_pool_broker_free(b);
        return st;
    }
    LOG_INFO("pool %s: listening on %s%s", pool, s->endpoint, s->curve_secret ? " (CURVE)" : "");
    *out = b;
    return MM_OK;
}

static void free_jobs(job_list *l) {
    while (l->head) {
        job *j = l->head;
        list_remove(l, j);
        job_free(j);
    }
}

void mm_pool_broker_free(mm_pool_broker *b) {
    if (!b) return;
    if (b->sock) zmq_close(b->sock);
    free_jobs(&b->queue);
    free_jobs(&b->sent);
    for (int i = 0; i < b->n_workers; i++) free(b->workers[i]);
    free(b->workers);
    while (b->ready) {
        result_node *n = b->ready;
        b->ready = n->next;
        free(n->r.payload);
        free(n);
    }
    free(b);
}

mm_status mm_pool_broker_submit(mm_pool_broker *b, uint64_t job_id, const mm_pool_job_fields *fields, uint8_t *payload,
                                size_t len) {
    if (len > b->max_bytes) {
        free(payload);
        return MM_ERROR(MM_ERR_INVALID, "pool %s: job of %zu bytes over pool_max_message_mb %d", b->pool, len,
                        b->s.max_message_mb);
    }
    if (live_by_id(b, job_id)) {
        free(payload);
        return MM_ERROR(MM_ERR_INVALID, "pool %s: job %llu already submitted", b->pool, (unsigned long long)job_id);
    }
    job *j = calloc(1, sizeof *j);
    if (!j) {
        free(payload);
        return MM_ERROR(MM_ERR_NOMEM, "pool %s: job %llu", b->pool, (unsigned long long)job_id);
    }
    int rc = payload ? zmq_msg_init_data(&j->payload, payload, len, free_payload, NULL) : zmq_msg_init(&j->payload);
    if (rc != 0) {
        free(payload);
        free(j);
        return MM_ERROR(MM_ERR_NOMEM, "pool %s: job %llu payload: %s", b->pool, (unsigned long long)job_id,
                        zmq_strerror(zmq_errno()));
    }
    j->has_payload = 1;
    j->id = job_id, j->serial = ++b->next_serial, j->state = JOB_QUEUED;
    if (fields) {
        j->fields = *fields;
        j->fields.sampler[sizeof j->fields.sampler - 1] = 0;
    }
    list_push_back(&b->queue, j);
    return MM_OK;
}

void mm_pool_broker_cancel(mm_pool_broker *b, uint64_t job_id) {
    job *j = live_by_id(b, job_id);
    if (j) {
        job_retire(b, j);
        return;
    }
    for (result_node **p = &b->ready; *p; p = &(*p)->next)
        if ((*p)->r.job_id == job_id) {
            result_node *n = *p;
            *p = n->next;
            if (b->ready_tail == n) {
                b->ready_tail = NULL;
                for (result_node *t = b->ready; t; t = t->next) b->ready_tail = t;
            }
            free(n->r.payload);
            free(n);
            return;
        }
}

int mm_pool_broker_poll(mm_pool_broker *b, mm_pool_result *out) {
    result_node *n = b->ready;
    if (!n) return 0;
    b->ready = n->next;
    if (!b->ready) b->ready_tail = NULL;
    *out = n->r;
    free(n);
    return 1;
}

int mm_pool_broker_workers_alive(const mm_pool_broker *b) { return b->n_workers; }

void mm_pool_broker_stats(const mm_pool_broker *b, mm_pool_stats *out) {
    *out = b->st;
    out->workers_alive = b->n_workers;
    out->jobs_queued = b->queue.n;
    out->jobs_in_flight = b->sent.n;
}

void *mm_pool_broker_socket(const mm_pool_broker *b) { return b->sock; }
