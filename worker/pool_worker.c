/* See pool_worker.h. Two threads: the socket thread owns the DEALER and everything said
 * to the coordinator (READY, heartbeats, liveness, reconnects, refusals, CANCEL, BYE); the
 * caller's thread computes. An inproc PAIR joins them: jobs one way, results the other.
 * Every PAIR message opens with a tag frame carrying the connection epoch (bumped at each
 * reconnect): jobs queued before a reconnect are skipped (a coordinator that lost us
 * has sent them elsewhere) and only this epoch's jobs count against the capacity that
 * the last READY announced. The tag also carries the job's ticket, through which a
 * CANCEL reaches a job queued on the PAIR or running. Frames are moved between sockets,
 * never copied. */
#include "common/curve_keys.h"
#include "pool_worker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/log.h"

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000
#define BYE_LINGER_MS 1000 /* how long the closing socket may take to deliver BYE */
#define STOP_CHECK_MS 500  /* longest poll: how late a signal caught by another thread may be noticed
                           * (one caught here ends the poll at once); shorter polls cost an idle
                           * worker ~0.1% of a core per 10 wakeups a second */
#define DEALER_HWM 64      /* messages queued each way on the DEALER */

typedef enum { PAIR_JOB, PAIR_RESULT, PAIR_SKIPPED, PAIR_STOP } pair_kind;

typedef enum { TICKET_QUEUED, TICKET_RUNNING, TICKET_SKIPPED } ticket_state;

/* One job handed to the compute side (its ticket). The socket thread makes it, lists it
 * in pool_shared.tickets and frees it when the compute side's answer for it comes back
 * over the PAIR (what is left, at the end of the run). The compute side only moves state
 * QUEUED -> RUNNING and reads cancel; the socket thread moves QUEUED -> SKIPPED on CANCEL
 * (whoever moves it first wins) or sets cancel on a running job. */
struct mm_pool_job_ctx {
    struct mm_pool_job_ctx *next; /* pool_shared.tickets: the socket thread's */
    uint64_t job_id;
    uint32_t epoch;
    int answered;                 /* the socket thread answered it (skipped on CANCEL) */
    double queued_at;
    atomic_int state;             /* ticket_state */
    atomic_int cancel;
};
typedef struct mm_pool_job_ctx ticket;

typedef struct {
    uint32_t epoch;
    int32_t kind;  /* pair_kind */
    ticket *job;   /* PAIR_JOB and the compute side's answer to it; NULL for PAIR_STOP */
} pair_tag;

typedef Metamorph__Internal__PoolHeader pool_header;

static volatile sig_atomic_t g_stop;

static void on_stop(int sig) { g_stop = 1; }

/* ---------------------------------------------------------------- flags */

typedef struct {
    const char *flag;
    size_t offset; /* of an int32_t in mm_pool_worker_config */
    int32_t lo, hi;
} int_flag;

static const int_flag INT_FLAGS[] = {
    {"--threads", offsetof(mm_pool_worker_config, threads), 0, 4096},
    {"--capacity", offsetof(mm_pool_worker_config, capacity), 1, 1024},
    {"--heartbeat-ms", offsetof(mm_pool_worker_config, heartbeat_ms), 10, 60000},
    {"--liveness", offsetof(mm_pool_worker_config, liveness), 2, 1000},
    {"--max-message-mb", offsetof(mm_pool_worker_config, max_message_mb), 1, 2047},
};

void mm_pool_worker_usage(FILE *f) {
    fprintf(f, "  --connect ENDPOINT    the pool's ROUTER in the coordinator (tcp://HOST:PORT)\n"
               "  --model DIR           model root (metamorph.json) or the part's own directory\n"
               "  --backend NAME        cpu (default), cpu-ref or cuda[:N]\n"
               "  --threads N           compute threads (default 0: all cores)\n"
               "  --capacity N          jobs accepted at once, queued + running (default 1)\n"
               "  --name ID             routing id, kept across reconnects (default POOL-HOST-PID)\n"
               "  --heartbeat-ms MS     heartbeat period (default 500)\n"
               "  --liveness N          silent heartbeat periods before the coordinator counts as gone (default 4)\n"
               "  --max-message-mb N    largest message accepted (default 64)\n"
               "  --curve-key FILE      this worker's CURVE key pair (mmctl keygen; or $MM_POOL_CURVE_KEY):\n"
               "                        for a coordinator with pool_curve_secret_key, which admits only\n"
               "                        the public keys in its pool_authorized_keys\n"
               "  --curve-server-key FILE  the coordinator's public key (its key file or FILE.pub;\n"
               "                        or $MM_POOL_SERVER_KEY)\n"
               "SIGINT/SIGTERM: says BYE and leaves with status 0.\n");
}

/* 1: took it, 0: not a shared flag, -1: bad value. */
static int take_shared(mm_pool_worker_config *c, const char *flag, const char *v) {
    if (!strcmp(flag, "--model")) c->model = v;
    else if (!strcmp(flag, "--backend")) c->backend = v;
    else if (!strcmp(flag, "--connect")) c->connect = v;
    else if (!strcmp(flag, "--name")) {
        if (!v[0] || strlen(v) >= sizeof c->name) return -1;
        snprintf(c->name, sizeof c->name, "%s", v);
    } else {
        for (size_t i = 0; i < sizeof INT_FLAGS / sizeof INT_FLAGS[0]; i++) {
            if (strcmp(flag, INT_FLAGS[i].flag) != 0) continue;
            char *end;
            errno = 0;
            long x = strtol(v, &end, 10);
            if (errno || end == v || *end || x < INT_FLAGS[i].lo || x > INT_FLAGS[i].hi) return -1;
            *(int32_t *)((char *)c + INT_FLAGS[i].offset) = (int32_t)x;
            return 1;
        }
        return 0;
    }
    return 1;
}

int mm_pool_worker_parse(int argc, char **argv, const char *prog, const char *pool, void (*usage)(FILE *f),
                         int (*extra)(void *user, const char *flag, const char *value), void *user,
                         mm_pool_worker_config *c) {
    *c = (mm_pool_worker_config){.backend = "cpu", .capacity = 1, .heartbeat_ms = 500, .liveness = 4,
                                 .max_message_mb = 64};
    const char *curve_key = NULL, *server_key = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            mm_pool_worker_usage(stdout);
            return 1;
        }
        if (!v) {
            fprintf(stderr, "%s: %s needs a value\n", prog, a);
            goto bad;
        }
        int took = take_shared(c, a, v);
        if (!strcmp(a, "--curve-key")) curve_key = v, took = 1;
        if (!strcmp(a, "--curve-server-key")) server_key = v, took = 1;
        if (took == 0 && extra) took = extra(user, a, v);
        if (took == 0) {
            fprintf(stderr, "%s: unknown option %s\n", prog, a);
            goto bad;
        }
        if (took < 0) {
            fprintf(stderr, "%s: %s: bad value '%s'\n", prog, a, v);
            goto bad;
        }
        i++;
    }
    if (!c->model || !c->connect) {
        fprintf(stderr, "%s: --model and --connect are required\n", prog);
        goto bad;
    }
    if (!curve_key && getenv("MM_POOL_CURVE_KEY") && getenv("MM_POOL_CURVE_KEY")[0]) curve_key = getenv("MM_POOL_CURVE_KEY");
    if (!server_key && getenv("MM_POOL_SERVER_KEY") && getenv("MM_POOL_SERVER_KEY")[0])
        server_key = getenv("MM_POOL_SERVER_KEY");
    if (!curve_key != !server_key) {
        fprintf(stderr, "%s: --curve-key and --curve-server-key go together\n", prog);
        goto bad;
    }
    if (curve_key && (mm_curve_key_read(curve_key, c->curve_public, c->curve_secret) != MM_OK ||
                      mm_curve_key_read(server_key, c->curve_server, NULL) != MM_OK)) {
        fprintf(stderr, "%s: %s\n", prog, mm_error_last());
        goto bad;
    }
    if (!c->name[0]) {
        char host[128] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        snprintf(c->name, sizeof c->name, "%s-%s-%d", pool, host, (int)getpid());
    }
    return 0;
bad:
    usage(stderr);
    mm_pool_worker_usage(stderr);
    return -1;
}

/* ---------------------------------------------------------------- frames */

/* Receives every frame of one message without waiting: the first cap kept in f (the
 * caller closes them), the rest dropped. Returns the message's frame count, 0 if none. */
static int recv_parts(void *sock, zmq_msg_t *f, int cap) {
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&m);
            if (n == 0) return 0;
            break; /* cannot happen mid-message: parts arrive together */
        }
        more = zmq_msg_more(&m);
        if (n < cap) f[n] = m;
        else zmq_msg_close(&m);
        n++;
    }
    for (int i = n; i < cap; i++) zmq_msg_init(&f[i]);
    return n;
}

static void close_parts(zmq_msg_t *f, int cap) {
    for (int i = 0; i < cap; i++) zmq_msg_close(&f[i]);
}

/* Packs h into a new frame. */
static int header_frame(const pool_header *h, zmq_msg_t *m) {
    size_t n = metamorph__internal__pool_header__get_packed_size(h);
    if (zmq_msg_init_size(m, n) != 0) return -1;
    metamorph__internal__pool_header__pack(h, zmq_msg_data(m));
    return 0;
}

/* Never waits: the PAIR has no high-water mark, and once the socket thread has closed
 * its end a send fails instead of blocking for ever. */
static int send_tag(void *pair, uint32_t epoch, pair_kind kind, ticket *job, int more) {
    pair_tag t = {epoch, (int32_t)kind, job};
    return zmq_send(pair, &t, sizeof t, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)) < 0 ? -1 : 0;
}

/* One end of the inproc PAIR: unbounded queues (the capacity bounds them). */
static void *pair_socket(void *zctx) {
    void *s = zmq_socket(zctx, ZMQ_PAIR);
    int zero = 0;
    if (s && (zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero) != 0 ||
              zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero) != 0)) {
        zmq_close(s);
        s = NULL;
    }
    return s;
}

/* ---------------------------------------------------------------- shared state */

typedef struct {
    const mm_pool_worker_config *c;
    const char *pool;
    void *zctx;
    char pair_endpoint[64];
    atomic_uint epoch;        /* bumped by the socket thread at each reconnect */
    atomic_int stopping;      /* set when the socket thread leaves: skip what is queued */
    ticket *tickets;          /* jobs handed to the compute side, unanswered by it */
    mm_status socket_status;  /* why the socket thread could not start (read after join) */
    char socket_error[1024];
} pool_shared;

/* ---------------------------------------------------------------- socket thread */

typedef struct {
    pool_shared *sh;
    const mm_pool_worker_config *c;
    void *dealer;        /* NULL between a lost coordinator and the next attempt */
    void *pair;
    uint32_t epoch;
    int joined;          /* heard the coordinator since the last READY */
    int32_t outstanding; /* jobs of this epoch handed to the compute side */
    int backoff_ms;
    double last_heard, last_sent, reconnect_at;
    uint64_t connects;
} socket_side;

static void header_start(const socket_side *ss, Metamorph__Internal__PoolMsgType type, pool_header *h) {
    metamorph__internal__pool_header__init(h);
    h->type = type;
    h->pool = (char *)ss->sh->pool;
    h->worker = (char *)ss->c->name;
}

/* Header (+ payload frame, moved) to the coordinator; dropped when not connected or
 * the queue is full (the coordinator sends the job again elsewhere). */
static void send_coordinator(socket_side *ss, const pool_header *h, zmq_msg_t *payload) {
    zmq_msg_t m;
    if (!ss->dealer || header_frame(h, &m) != 0) return;
    int ok = zmq_msg_send(&m, ss->dealer, ZMQ_DONTWAIT | (payload ? ZMQ_SNDMORE : 0)) >= 0;
    if (ok && payload) ok = zmq_msg_send(payload, ss->dealer, ZMQ_DONTWAIT) >= 0;
    zmq_msg_close(&m);
    if (!ok) LOG_WARN("%s: message to the coordinator dropped: %s", ss->c->name, zmq_strerror(errno));
    else ss->last_sent = mm_now_ms();
}

/* An error RESULT sent from here (a job refused, or skipped on CANCEL). */
static void answer_error(socket_side *ss, uint64_t job_id, mm_status status, const char *why) {
    pool_header h;
    header_start(ss, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_RESULT, &h);
    h.job_id = job_id, h.error = (char *)why, h.error_status = status;
    zmq_msg_t empty;
    zmq_msg_init(&empty);
    send_coordinator(ss, &h, &empty);
    zmq_msg_close(&empty);
}

/* The job never reaches the compute side. */
static void refuse_job(socket_side *ss, uint64_t job_id, mm_status status, const char *why) {
    LOG_INFO("%s job %llu refused: %s", ss->sh->pool, (unsigned long long)job_id, why);
    answer_error(ss, job_id, status, why);
}

static int set_int(void *s, int opt, int v) { return zmq_setsockopt(s, opt, &v, sizeof v); }

/* A fresh DEALER under our routing id, connected, READY sent. */
static mm_status dealer_open(socket_side *ss) {
    const mm_pool_worker_config *c = ss->c;
    void *s = zmq_socket(ss->sh->zctx, ZMQ_DEALER);
    if (!s) return MM_ERROR(MM_ERR_INTERNAL, "zmq_socket: %s", zmq_strerror(errno));
    int64_t max_msg = (int64_t)c->max_message_mb << 20;
    if (zmq_setsockopt(s, ZMQ_ROUTING_ID, c->name, strlen(c->name)) != 0 || set_int(s, ZMQ_LINGER, 0) != 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg) != 0 || set_int(s, ZMQ_SNDHWM, DEALER_HWM) != 0 ||
        set_int(s, ZMQ_RCVHWM, DEALER_HWM) != 0 || set_int(s, ZMQ_RECONNECT_IVL, BACKOFF_FIRST_MS) != 0 ||
        set_int(s, ZMQ_RECONNECT_IVL_MAX, BACKOFF_MAX_MS) != 0 ||
        (c->curve_secret[0] && (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, c->curve_server, 40) != 0 ||
                                zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, c->curve_public, 40) != 0 ||
                                zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, c->curve_secret, 40) != 0))) {
        mm_status st = MM_ERROR(MM_ERR_INTERNAL, "DEALER options: %s", zmq_strerror(errno));
        zmq_close(s);
        return st;
    }
    if (zmq_connect(s, c->connect) != 0) {
        mm_status st = MM_ERROR(MM_ERR_INVALID, "cannot connect to %s: %s", c->connect, zmq_strerror(errno));
        zmq_close(s);
        return st;
    }
    ss->dealer = s;
    ss->joined = 0;
    ss->last_heard = mm_now_ms();
    ss->connects++;
    pool_header h;
    header_start(ss, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_READY, &h);
    h.capacity = c->capacity, h.heartbeat_ms = c->heartbeat_ms;
    send_coordinator(ss, &h, NULL);
    return MM_OK;
}

static void dealer_close(socket_side *ss, int linger_ms) {
    if (!ss->dealer) return;
    set_int(ss->dealer, ZMQ_LINGER, linger_ms);
    zmq_close(ss->dealer);
    ss->dealer = NULL;
}

/* The coordinator said nothing for `liveness` periods: start over with a new socket
 * after the backoff. Queued jobs of the old epoch will be skipped. */
static void coordinator_lost(socket_side *ss, double now) {
    LOG_INFO("%s: no word from the coordinator at %s for %.0f ms: reconnecting in %d ms", ss->c->name, ss->c->connect,
             now - ss->last_heard, ss->backoff_ms);
    dealer_close(ss, 0);
    ss->reconnect_at = now + ss->backoff_ms;
    ss->backoff_ms = ss->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ss->backoff_ms * 2;
    ss->epoch = atomic_fetch_add(&ss->sh->epoch, 1) + 1;
    ss->outstanding = 0;
}

/* A JOB (header parsed as h, frames f, n of them) to the compute side, or refused. */
static void dispatch_job(socket_side *ss, const pool_header *h, zmq_msg_t *f, int n) {
    char why[256];
    if (n != 2) {
        snprintf(why, sizeof why, n == 1 ? "job has no payload frame" : "job has %d frames (header + payload expected)", n);
        refuse_job(ss, h->job_id, MM_ERR_FORMAT, why);
        return;
    }
    if (ss->outstanding >= ss->c->capacity) {
        snprintf(why, sizeof why, "worker busy: %d jobs queued or running (capacity %d)", ss->outstanding,
                 ss->c->capacity);
        refuse_job(ss, h->job_id, MM_ERR_BUSY, why);
        return;
    }
    ticket *t = calloc(1, sizeof *t);
    if (!t) {
        refuse_job(ss, h->job_id, MM_ERR_NOMEM, "out of memory queueing the job");
        return;
    }
    t->job_id = h->job_id, t->epoch = ss->epoch, t->queued_at = mm_now_ms();
    atomic_init(&t->state, TICKET_QUEUED);
    atomic_init(&t->cancel, 0);
    if (send_tag(ss->pair, ss->epoch, PAIR_JOB, t, 1) != 0 || zmq_msg_send(&f[0], ss->pair, ZMQ_SNDMORE) < 0 ||
        zmq_msg_send(&f[1], ss->pair, ZMQ_DONTWAIT) < 0) {
        free(t); /* a message is delivered whole or not at all: the compute side never saw it */
        snprintf(why, sizeof why, "cannot queue the job: %s", zmq_strerror(errno));
        refuse_job(ss, h->job_id, MM_ERR_INTERNAL, why);
        return;
    }
    t->next = ss->sh->tickets, ss->sh->tickets = t;
    ss->outstanding++;
}

/* CANCEL: every job with that id handed to the compute side before it. One not started
 * is answered now (its slot frees here and at the coordinator) and skipped when the
 * compute side reaches it; a running one is asked to stop. */
static void cancel_jobs(socket_side *ss, uint64_t job_id) {
    int held = 0;
    for (ticket *t = ss->sh->tickets; t; t = t->next) {
        if (t->job_id != job_id || t->answered) continue;
        held = 1;
        int queued = TICKET_QUEUED;
        if (atomic_compare_exchange_strong(&t->state, &queued, TICKET_SKIPPED)) {
            t->answered = 1;
            if (t->epoch == ss->epoch && ss->outstanding > 0) ss->outstanding--;
            LOG_INFO("%s job %llu cancelled before it started: skipped", ss->sh->pool, (unsigned long long)job_id);
            answer_error(ss, job_id, MM_ERR_CANCELLED, "cancelled before it started");
        } else if (!atomic_exchange(&t->cancel, 1)) {
            LOG_INFO("%s job %llu cancelled while running: asked to stop", ss->sh->pool, (unsigned long long)job_id);
        }
    }
    if (!held)
        LOG_DEBUG("%s: CANCEL of job %llu, which it does not hold (answered already?)", ss->c->name,
                  (unsigned long long)job_id);
}

/* The compute side is done with t: forget it. */
static void ticket_release(pool_shared *sh, ticket *t) {
    for (ticket **p = &sh->tickets; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            free(t);
            return;
        }
}

/* Every message waiting on the DEALER. */
static void on_coordinator(socket_side *ss) {
    zmq_msg_t f[2];
    int n;
    while (ss->dealer && (n = recv_parts(ss->dealer, f, 2)) > 0) {
        ss->last_heard = mm_now_ms();
        if (!ss->joined) {
            ss->joined = 1, ss->backoff_ms = BACKOFF_FIRST_MS;
            LOG_INFO("%s joined the %s pool at %s (capacity %d, heartbeat %d ms%s)", ss->c->name, ss->sh->pool,
                     ss->c->connect, ss->c->capacity, ss->c->heartbeat_ms, ss->connects > 1 ? ", again" : "");
        }
        pool_header *h = metamorph__internal__pool_header__unpack(NULL, zmq_msg_size(&f[0]), zmq_msg_data(&f[0]));
        if (!h) { /* no job id to answer: a JOB it was is re-sent when its time is up */
            LOG_ERROR("%s: undecodable pool header (%zu bytes) from the coordinator ignored (is it another version?)",
                      ss->c->name, zmq_msg_size(&f[0]));
        } else if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_JOB) {
            dispatch_job(ss, h, f, n);
        } else if (h->type == METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_CANCEL) {
            cancel_jobs(ss, h->job_id);
        } else if (h->type != METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT) {
            LOG_WARN("%s: unexpected message type %d from the coordinator ignored%s%s", ss->c->name, (int)h->type,
                     h->error[0] ? ": " : "", h->error);
        }
        if (h) metamorph__internal__pool_header__free_unpacked(h, NULL);
        close_parts(f, 2);
    }
}

/* Every result waiting on the PAIR, to the coordinator. */
static void on_results(socket_side *ss) {
    zmq_msg_t f[3];
    while (recv_parts(ss->pair, f, 3) > 0) {
        pair_tag t = {0, PAIR_SKIPPED, NULL};
        if (zmq_msg_size(&f[0]) == sizeof t) memcpy(&t, zmq_msg_data(&f[0]), sizeof t);
        int answered = t.job && t.job->answered;
        if (!answered && t.epoch == ss->epoch && ss->outstanding > 0) ss->outstanding--;
        if (t.job) ticket_release(ss->sh, t.job);
        /* a result from before a reconnect still goes out: if that job is still
         * wanted it saves a re-run, if not the coordinator drops it by job id. Once
         * stopping, nothing does: BYE follows and re-queues the job, and the result may
         * be a "cancelled" the coordinator never asked for (mm_pool_job_cancelled). */
        if (t.kind == PAIR_RESULT && !answered && ss->dealer && !g_stop) {
            int ok = zmq_msg_send(&f[1], ss->dealer, ZMQ_DONTWAIT | ZMQ_SNDMORE) >= 0 &&
                     zmq_msg_send(&f[2], ss->dealer, ZMQ_DONTWAIT) >= 0;
            if (ok) ss->last_sent = mm_now_ms();
            else LOG_WARN("%s: result dropped: %s", ss->c->name, zmq_strerror(errno));
        }
        close_parts(f, 3);
    }
}

static int poll_timeout(const socket_side *ss, double now) {
    const double hb = ss->c->heartbeat_ms;
    double next = now + STOP_CHECK_MS;
    if (ss->dealer) {
        double beat = ss->last_sent + hb, gone = ss->last_heard + hb * ss->c->liveness;
        next = beat < next ? beat : next;
        next = gone < next ? gone : next;
    } else if (ss->reconnect_at < next) {
        next = ss->reconnect_at;
    }
    return next <= now ? 0 : (int)(next - now) + 1;
}

static void *socket_main(void *arg) {
    pool_shared *sh = arg;
    socket_side ss = {.sh = sh, .c = sh->c, .backoff_ms = BACKOFF_FIRST_MS};
    ss.pair = pair_socket(sh->zctx);
    if (!ss.pair || zmq_connect(ss.pair, sh->pair_endpoint) != 0) {
        sh->socket_status = MM_ERROR(MM_ERR_INTERNAL, "inproc PAIR: %s", zmq_strerror(errno));
        goto out;
    }
    sh->socket_status = dealer_open(&ss);
    if (sh->socket_status != MM_OK) goto out;
    LOG_INFO("%s: %s pool worker connecting to %s", ss.c->name, sh->pool, ss.c->connect);
    while (!g_stop) {
        double now = mm_now_ms();
        if (!ss.dealer && now >= ss.reconnect_at) {
            if (dealer_open(&ss) != MM_OK) {
                LOG_ERROR("%s: %s", ss.c->name, mm_error_last());
                ss.reconnect_at = now + ss.backoff_ms;
            } else {
                LOG_INFO("%s: reconnecting to %s (attempt %llu), READY sent", ss.c->name, ss.c->connect,
                         (unsigned long long)ss.connects);
            }
        }
        if (ss.dealer && now - ss.last_heard >= (double)ss.c->heartbeat_ms * ss.c->liveness)
            coordinator_lost(&ss, now);
        if (ss.dealer && now - ss.last_sent >= ss.c->heartbeat_ms) {
            pool_header h;
            header_start(&ss, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_HEARTBEAT, &h);
            send_coordinator(&ss, &h, NULL);
            ss.last_sent = now; /* also when dropped: a full queue is no reason to spin */
        }
        zmq_pollitem_t items[2] = {{ss.pair, 0, ZMQ_POLLIN, 0}, {ss.dealer, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, ss.dealer ? 2 : 1, poll_timeout(&ss, mm_now_ms()));
        if (rc < 0) {
            if (errno != EINTR) LOG_ERROR("%s: zmq_poll: %s", ss.c->name, zmq_strerror(errno));
            continue;
        }
        if (items[0].revents & ZMQ_POLLIN) on_results(&ss);
        if (ss.dealer && (items[1].revents & ZMQ_POLLIN)) on_coordinator(&ss);
    }
    if (ss.dealer) {
        pool_header h;
        header_start(&ss, METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_BYE, &h);
        send_coordinator(&ss, &h, NULL);
        LOG_INFO("%s: stopping, BYE sent to %s", ss.c->name, ss.c->connect);
        dealer_close(&ss, BYE_LINGER_MS);
    }
out:
    atomic_store(&sh->stopping, 1);
    if (sh->socket_status != MM_OK)
        snprintf(sh->socket_error, sizeof sh->socket_error, "%s", mm_error_without_location(mm_error_last()));
    if (ss.pair) {
        send_tag(ss.pair, ss.epoch, PAIR_STOP, NULL, 0);
        zmq_close(ss.pair);
    }
    return NULL;
}

/* ---------------------------------------------------------------- compute side */

typedef struct {
    uint64_t done, failed, cancelled;
} job_counts;

/* SIGINT/SIGTERM counts too: BYE has sent the job elsewhere and its result would go
 * nowhere, so finishing it would only hold up the exit. */
int mm_pool_job_cancelled(const mm_pool_job_ctx *ctx) { return ctx && (atomic_load(&ctx->cancel) || g_stop); }

static void free_payload(void *data, void *hint) { free(data); }

/* Runs one job (frames: header, payload; t: its ticket, state RUNNING) and sends its
 * RESULT back over the PAIR. */
static void compute_one(const pool_shared *sh, mm_pool_job_fn job, void *user, void *pair, uint32_t epoch, ticket *t,
                        zmq_msg_t *f, job_counts *counts) {
    double t0 = mm_now_ms();
    LOG_INFO("%s job %llu started (queued %.0f ms)", sh->pool, (unsigned long long)t->job_id, t0 - t->queued_at);
    mm_pool_output out = {0};
    pool_header *in = metamorph__internal__pool_header__unpack(NULL, zmq_msg_size(&f[0]), zmq_msg_data(&f[0]));
    mm_status s = in ? job(user, t, in, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), &out)
                     : MM_ERROR(MM_ERR_FORMAT, "undecodable pool header");
    if (s == MM_OK && mm_pool_job_cancelled(t)) /* nobody wants it: no payload to ship */
        s = MM_ERROR(MM_ERR_CANCELLED, "cancelled (it ran to its end before it could stop)");
    pool_header h;
    metamorph__internal__pool_header__init(&h);
    h.type = METAMORPH__INTERNAL__POOL_MSG_TYPE__POOL_RESULT;
    h.pool = (char *)sh->pool, h.worker = (char *)sh->c->name;
    h.job_id = in ? in->job_id : 0;
    char why[1024];
    if (s == MM_OK) {
        h.n_tokens = out.n_tokens, h.dim = out.dim, h.width = out.width, h.height = out.height;
        counts->done++;
        LOG_INFO("%s job %llu done in %.0f ms, %zu bytes (%llu done, %llu failed)", sh->pool,
                 (unsigned long long)h.job_id, mm_now_ms() - t0, out.len, (unsigned long long)counts->done,
                 (unsigned long long)counts->failed);
    } else {
        if (s == MM_ERR_CANCELLED)
            LOG_INFO("%s job %llu stopped after %.0f ms: %s (%llu cancelled)", sh->pool, (unsigned long long)h.job_id,
                     mm_now_ms() - t0, mm_error_without_location(mm_error_last()), (unsigned long long)++counts->cancelled);
        else
            LOG_INFO("%s job %llu failed: %s (%llu done, %llu failed)", sh->pool, (unsigned long long)h.job_id,
                     mm_error_last(), (unsigned long long)counts->done, (unsigned long long)++counts->failed);
        snprintf(why, sizeof why, "%s", mm_error_without_location(mm_error_last()));
        h.error = why, h.error_status = s;
        free(out.payload);
        out.payload = NULL, out.len = 0;
    }
    if (in) metamorph__internal__pool_header__free_unpacked(in, NULL);
    zmq_msg_t hm, pm;
    if (header_frame(&h, &hm) != 0) {
        LOG_ERROR("%s job %llu: no memory for its result", sh->pool, (unsigned long long)h.job_id);
        free(out.payload);
        send_tag(pair, epoch, PAIR_SKIPPED, t, 0);
        return;
    }
    if (!out.payload) {
        zmq_msg_init(&pm);
    } else if (zmq_msg_init_data(&pm, out.payload, out.len, free_payload, NULL) != 0) { /* zero-copy: zmq frees it */
        LOG_ERROR("%s job %llu: cannot wrap its %zu-byte payload", sh->pool, (unsigned long long)h.job_id, out.len);
        free(out.payload);
        zmq_msg_init(&pm);
    }
    if (send_tag(pair, epoch, PAIR_RESULT, t, 1) != 0 || zmq_msg_send(&hm, pair, ZMQ_SNDMORE) < 0 ||
        zmq_msg_send(&pm, pair, ZMQ_DONTWAIT) < 0)
        LOG_WARN("%s job %llu: result not sent (stopping?): %s", sh->pool, (unsigned long long)h.job_id,
                  zmq_strerror(errno));
    zmq_msg_close(&hm);
    zmq_msg_close(&pm);
}

/* Jobs from the socket thread, one after another, until it says STOP. */
static void compute_loop(pool_shared *sh, void *pair, mm_pool_job_fn job, void *user) {
    job_counts counts = {0};
    zmq_msg_t f[3];
    for (;;) {
        zmq_pollitem_t it = {pair, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, -1) < 0) continue; /* EINTR: a signal, the socket thread sees it */
        int n = recv_parts(pair, f, 3);
        if (n == 0) continue;
        pair_tag t = {0, PAIR_STOP, NULL};
        if (zmq_msg_size(&f[0]) == sizeof t) memcpy(&t, zmq_msg_data(&f[0]), sizeof t);
        if (t.kind == PAIR_STOP || !t.job) {
            close_parts(f, 3);
            break;
        }
        int queued = TICKET_QUEUED;
        if (atomic_load(&sh->stopping) || t.epoch != atomic_load(&sh->epoch)) {
            send_tag(pair, t.epoch, PAIR_SKIPPED, t.job, 0); /* queued before a reconnect or a stop */
        } else if (!atomic_compare_exchange_strong(&t.job->state, &queued, TICKET_RUNNING)) {
            LOG_DEBUG("%s job %llu reached: cancelled before, passed over", sh->pool, (unsigned long long)t.job->job_id);
            send_tag(pair, t.epoch, PAIR_SKIPPED, t.job, 0); /* answered by the socket thread */
        } else {
            compute_one(sh, job, user, pair, t.epoch, t.job, &f[1], &counts);
        }
        close_parts(f, 3);
    }
    LOG_INFO("%s: %s pool worker left: %llu jobs done, %llu failed, %llu stopped on CANCEL", sh->c->name, sh->pool,
             (unsigned long long)counts.done, (unsigned long long)counts.failed, (unsigned long long)counts.cancelled);
}

static void catch_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sa.sa_flags = SA_RESETHAND; /* no SA_RESTART: waits return early; a second signal ends the process */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

mm_status mm_pool_worker_run(const mm_pool_worker_config *c, const char *pool, mm_pool_job_fn job, void *user) {
    pool_shared sh = {.c = c, .pool = pool, .socket_status = MM_OK};
    atomic_init(&sh.epoch, 0);
    atomic_init(&sh.stopping, 0);
    g_stop = 0;
    catch_stop_signals();
    sh.zctx = zmq_ctx_new();
    if (!sh.zctx) return MM_ERROR(MM_ERR_INTERNAL, "zmq_ctx_new: %s", zmq_strerror(errno));
    mm_status s = MM_OK;
    snprintf(sh.pair_endpoint, sizeof sh.pair_endpoint, "inproc://mm-pool-worker-%p", (void *)&sh);
    void *pair = pair_socket(sh.zctx);
    if (!pair || zmq_bind(pair, sh.pair_endpoint) != 0) {
        s = MM_ERROR(MM_ERR_INTERNAL, "inproc PAIR: %s", zmq_strerror(errno));
        goto out;
    }
    pthread_t thread;
    if (pthread_create(&thread, NULL, socket_main, &sh) != 0) {
        s = MM_ERROR(MM_ERR_INTERNAL, "cannot start the socket thread");
        goto out;
    }
    compute_loop(&sh, pair, job, user);
    pthread_join(thread, NULL);
    while (sh.tickets) { /* answers the socket thread left before hearing */
        ticket *t = sh.tickets;
        sh.tickets = t->next;
        free(t);
    }
    if (sh.socket_status != MM_OK) s = mm_error_set(sh.socket_status, __FILE__, __LINE__, "%s", sh.socket_error);
out:
    if (pair) zmq_close(pair);
    zmq_ctx_term(sh.zctx);
    return s;
}
