/* See mpi_driver.h. */
#include "mpi_driver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "pipeline/liveness.h"
#include "pipeline/pipeline_mpi.h"

typedef struct {
    uint8_t *buf;
    MPI_Request *reqs; /* [P] */
} plan_send;

struct mm_mpi_driver {
    int P;
    mm_stage_info stages[MM_MAX_STAGES];
    int projector, vision_head;
    int32_t visual_dim;
    plan_send *sends;  /* plans whose Isends have not all completed */
    int n_sends, cap_sends;
    int64_t unanswered; /* plans sent whose result has not come back */
    double last_idle_poll_ms;
    mm_liveness live;   /* ranks 1..P, watched from their hello on */
};

/* With no plan out, only a stage's last statistics can still arrive: MPI is polled
 * every IDLE_POLL_MS then, not at every turn of the scheduler loop (each poll runs
 * MPI's progress engine, ~20-40 us here: most of an idle coordinator's CPU). */
#define IDLE_POLL_MS 100

static int idle_poll_due(mm_mpi_driver *d) {
    if (d->unanswered > 0 || d->n_sends > 0) return 1;
    double now = mm_now_ms();
    if (now - d->last_idle_poll_ms < IDLE_POLL_MS) return 0;
    d->last_idle_poll_ms = now;
    return 1;
}

/* The stages' liveness: beats, and a silent stage named (the rank's host and pid, known
 * from its hello) in one line. */
static mm_status check_liveness(mm_mpi_driver *d) {
    int silent = -1;
    mm_status s = mm_liveness_tick(&d->live, &silent);
    if (s == MM_OK) return MM_OK;
    if (silent < 1 || silent > d->P) return s;
    const mm_stage_info *si = &d->stages[silent - 1];
    return MM_ERROR(MM_ERR_IO, "stage %d (rank %d on %s, pid %d) silent for %.0f ms: dead or cut off", silent, silent,
                    si->host, si->pid, mm_liveness_silence_ms(&d->live, silent));
}

static mm_status wait_hook(void *user) { return check_liveness(user); }

mm_status mm_mpi_driver_init(int n_stages, int liveness_ms, mm_mpi_driver **out) {
    if (n_stages < 1 || n_stages > MM_MAX_STAGES)
        return MM_ERROR(MM_ERR_INVALID, "%d stages: start 1..%d mm-stage ranks after the coordinator", n_stages,
                        MM_MAX_STAGES);
    mm_mpi_driver *d = calloc(1, sizeof *d);
    CHECK(CHECK_ALLOC(d));
    d->P = n_stages;
    mm_liveness_init(&d->live, n_stages + 1, liveness_ms);
    mm_mpi_set_wait_hook(wait_hook, d);
    *out = d;
    return MM_OK;
}

void mm_mpi_driver_free(mm_mpi_driver *d) {
    if (!d) return;
    mm_mpi_set_wait_hook(NULL, NULL);
    mm_liveness_settle(&d->live, 0);
    for (int i = 0; i < d->n_sends; i++) {
        free(d->sends[i].buf);
        free(d->sends[i].reqs);
    }
    free(d->sends);
    free(d);
}

mm_status mm_mpi_driver_hello(mm_mpi_driver *d, volatile sig_atomic_t *abort_flag) {
    int got_all = 0;
    int seen[MM_MAX_STAGES + 1] = {0};
    while (got_all < d->P) {
        if (*abort_flag) return MM_ERROR(MM_ERR_IO, "stopped while waiting for the stages to load");
        CHECK(check_liveness(d)); /* the stages that said hello wait for the others with us */
        uint8_t *buf;
        size_t len;
        MPI_Status st;
        int got;
        CHECK(mm_mpi_poll_msg(MPI_ANY_SOURCE, MM_TAG_HELLO, &buf, &len, &st, &got));
        if (!got) {
            struct timespec t = {0, 2000000};
            nanosleep(&t, NULL);
            continue;
        }
        Metamorph__Internal__StageHello *h = metamorph__internal__stage_hello__unpack(NULL, len, buf);
        free(buf);
        if (!h) return MM_ERROR(MM_ERR_FORMAT, "undecodable hello from rank %d", st.MPI_SOURCE);
        mm_status s = MM_OK;
        int k = st.MPI_SOURCE - 1;
        if (h->error[0]) s = MM_ERROR(MM_ERR_IO, "%s", h->error);
        else if (k < 0 || k >= d->P || seen[k]) s = MM_ERROR(MM_ERR_INTERNAL, "unexpected hello from rank %d", st.MPI_SOURCE);
        if (s == MM_OK) {
            seen[k] = 1;
            got_all++;
            mm_liveness_heard(&d->live, st.MPI_SOURCE);
            mm_stage_info *si = &d->stages[k];
            si->rank = h->rank, si->pid = h->pid, si->layer_begin = h->layer_begin, si->layer_end = h->layer_end;
            si->block_begin = h->block_begin, si->block_end = h->block_end;
            snprintf(si->host, sizeof si->host, "%s", h->host);
            if (k == 0) d->projector = h->projector;
            if (k == d->P - 1) d->vision_head = h->vision_head;
            if (h->visual_dim) d->visual_dim = h->visual_dim;
        }
        metamorph__internal__stage_hello__free_unpacked(h, NULL);
        CHECK(s);
    }
    return MM_OK;
}

mm_status mm_mpi_driver_send_plan(mm_mpi_driver *d, uint8_t *buf, size_t len) {
    if (d->n_sends == d->cap_sends) {
        int cap = d->cap_sends ? d->cap_sends * 2 : 8;
        plan_send *s = realloc(d->sends, (size_t)cap * sizeof *s);
        if (!s) {
            free(buf);
            return MM_ERROR(MM_ERR_NOMEM, "plan sends");
        }
        d->sends = s, d->cap_sends = cap;
    }
    plan_send *ps = &d->sends[d->n_sends];
    ps->buf = buf;
    ps->reqs = calloc((size_t)d->P, sizeof *ps->reqs);
    if (!ps->reqs) {
        free(buf);
        return MM_ERROR(MM_ERR_NOMEM, "plan requests");
    }
    d->n_sends++;
    d->unanswered++;
    if (len > (size_t)INT32_MAX) return MM_ERROR(MM_ERR_INVALID, "step plan of %zu bytes", len);
    for (int k = 0; k < d->P; k++) {
        MPI_CHECK(MPI_Isend(buf, (int)len, MPI_BYTE, k + 1, MM_TAG_PLAN, MPI_COMM_WORLD, &ps->reqs[k]));
        mm_liveness_sent(&d->live, k + 1); /* the plan is this period's beat */
    }
    return MM_OK;
}

static mm_status progress_sends(mm_mpi_driver *d) {
    int i = 0;
    while (i < d->n_sends) {
        int done = 0;
        MPI_Status sts[MM_MAX_STAGES];
        MPI_CHECK(MPI_Testall(d->P, d->sends[i].reqs, &done, sts));
        if (!done) {
            i++;
            continue;
        }
        free(d->sends[i].buf);
        free(d->sends[i].reqs);
        d->sends[i] = d->sends[--d->n_sends]; /* order of completed sends does not matter */
    }
    return MM_OK;
}

mm_status mm_mpi_driver_poll(mm_mpi_driver *d, Metamorph__Internal__StepResult **res) {
    *res = NULL;
    if (!idle_poll_due(d)) return MM_OK;
    CHECK(progress_sends(d));
    CHECK(check_liveness(d));
    uint8_t *buf;
    size_t len;
    MPI_Status st;
    int got;
    for (;;) { /* statistics: keep the latest of each stage */
        CHECK(mm_mpi_poll_msg(MPI_ANY_SOURCE, MM_TAG_STATS, &buf, &len, &st, &got));
        if (!got) break;
        Metamorph__Internal__StageStats *s = metamorph__internal__stage_stats__unpack(NULL, len, buf);
        free(buf);
        mm_liveness_heard(&d->live, st.MPI_SOURCE);
        if (s && st.MPI_SOURCE >= 1 && st.MPI_SOURCE <= d->P) {
            d->stages[st.MPI_SOURCE - 1].busy_ms = s->busy_ms;
            d->stages[st.MPI_SOURCE - 1].steps = s->steps;
        }
        if (s) metamorph__internal__stage_stats__free_unpacked(s, NULL);
    }
    CHECK(mm_mpi_poll_msg(MPI_ANY_SOURCE, MM_TAG_RESULT, &buf, &len, &st, &got));
    if (!got) return MM_OK;
    mm_liveness_heard(&d->live, st.MPI_SOURCE);
    if (d->unanswered > 0) d->unanswered--; /* a failed step may answer twice */
    *res = metamorph__internal__step_result__unpack(NULL, len, buf);
    free(buf);
    if (!*res) return MM_ERROR(MM_ERR_FORMAT, "undecodable step result from rank %d", st.MPI_SOURCE);
    return MM_OK;
}

/* Every stage's BYE (its last beat has left), up to the liveness bound. */
static mm_status wait_byes(mm_mpi_driver *d) {
    int n = 0;
    double t0 = mm_now_ms();
    while (n < d->P) {
        uint8_t *buf;
        size_t len;
        MPI_Status st;
        int got;
        CHECK(mm_mpi_poll_msg(MPI_ANY_SOURCE, MM_TAG_BYE, &buf, &len, &st, &got));
        if (got) {
            free(buf);
            n++;
            continue;
        }
        if (mm_now_ms() - t0 > d->live.bound_ms)
            return MM_ERROR(MM_ERR_IO, "%d of %d stages did not say goodbye", d->P - n, d->P);
        int silent;
        CHECK(mm_liveness_tick(&d->live, &silent)); /* takes in their last beats */
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return MM_OK;
}

mm_status mm_mpi_driver_shutdown(mm_mpi_driver *d) {
    char nothing = 0;
    /* no beats from here on (stages stop theirs at SHUTDOWN), and none left leaving when
     * MPI_Finalize starts: see mm_liveness_settle */
    mm_liveness_quiet(&d->live);
    for (int k = 0; k < d->P; k++) CHECK(mm_mpi_send_msg(k + 1, MM_TAG_SHUTDOWN, &nothing, 1));
    /* plans still being sent must finish before MPI_Finalize */
    for (int i = 0; i < d->n_sends; i++)
        for (int k = 0; k < d->P; k++) CHECK(mm_mpi_wait(&d->sends[i].reqs[k]));
    CHECK(wait_byes(d));
    mm_liveness_settle(&d->live, d->live.bound_ms);
    return progress_sends(d);
}

int mm_mpi_driver_n_stages(const mm_mpi_driver *d) { return d->P; }
const mm_stage_info *mm_mpi_driver_stage(const mm_mpi_driver *d, int k) { return &d->stages[k]; }
int mm_mpi_driver_has_projector(const mm_mpi_driver *d) { return d->projector; }
int mm_mpi_driver_has_vision_head(const mm_mpi_driver *d) { return d->vision_head; }
int32_t mm_mpi_driver_visual_dim(const mm_mpi_driver *d) { return d->visual_dim; }
