/* See liveness.h. */
#include "liveness.h"

#include <time.h>

#include "common/clock.h"
#include "pipeline_mpi.h"

void mm_liveness_init(mm_liveness *l, int size, int bound_ms) {
    l->size = size > MM_MAX_STAGES + 1 ? MM_MAX_STAGES + 1 : size;
    l->bound_ms = bound_ms;
    l->period_ms = (double)bound_ms / MM_LIVENESS_BEATS_PER_BOUND;
    l->beat_byte = 0;
    l->quiet = 0;
    l->ticked_ms = 0;
    for (int r = 0; r < MM_MAX_STAGES + 1; r++)
        l->peer[r] = (mm_peer_liveness){0, 0, 0, MPI_REQUEST_NULL};
}

void mm_liveness_heard(mm_liveness *l, int rank) {
    if (rank < 0 || rank >= l->size) return;
    l->peer[rank].watched = 1;
    l->peer[rank].heard_ms = mm_now_ms();
}

void mm_liveness_sent(mm_liveness *l, int rank) {
    if (rank >= 0 && rank < l->size) l->peer[rank].sent_ms = mm_now_ms();
}

double mm_liveness_silence_ms(const mm_liveness *l, int rank) {
    if (rank < 0 || rank >= l->size || !l->peer[rank].watched) return 0;
    return mm_now_ms() - l->peer[rank].heard_ms;
}

mm_status mm_liveness_tick(mm_liveness *l, int *silent_rank) {
    *silent_rank = -1;
    double t = mm_now_ms();
    if (t - l->ticked_ms < MM_LIVENESS_TICK_MS) return MM_OK;
    l->ticked_ms = t;
    for (;;) { /* beats that arrived: their arrival is all they say */
        int got = 0;
        MPI_Status st;
        MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, MM_TAG_BEAT, MPI_COMM_WORLD, &got, &st));
        if (!got) break;
        char b;
        MPI_CHECK(MPI_Recv(&b, 1, MPI_BYTE, st.MPI_SOURCE, MM_TAG_BEAT, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
        mm_liveness_heard(l, st.MPI_SOURCE);
    }
    double now = mm_now_ms();
    for (int r = 0; r < l->size; r++) {
        mm_peer_liveness *p = &l->peer[r];
        if (!p->watched) continue;
        if (now - p->heard_ms > l->bound_ms) {
            *silent_rank = r;
            return MM_ERROR(MM_ERR_IO, "rank %d silent for %.0f ms (stage_liveness_ms %.0f)", r, now - p->heard_ms,
                            l->bound_ms);
        }
        if (p->beat != MPI_REQUEST_NULL) { /* the last beat must have left before the next */
            int done = 0;
            MPI_CHECK(MPI_Test(&p->beat, &done, MPI_STATUS_IGNORE));
            if (!done) continue;
        }
        if (l->quiet || now - p->sent_ms < l->period_ms) continue;
        MPI_CHECK(MPI_Isend(&l->beat_byte, 1, MPI_BYTE, r, MM_TAG_BEAT, MPI_COMM_WORLD, &p->beat));
        p->sent_ms = now;
    }
    return MM_OK;
}

void mm_liveness_quiet(mm_liveness *l) { l->quiet = 1; }

void mm_liveness_settle(mm_liveness *l, double timeout_ms) {
    l->quiet = 1;
    double t0 = mm_now_ms();
    for (int r = 0; r < l->size; r++) {
        MPI_Request *q = &l->peer[r].beat;
        while (*q != MPI_REQUEST_NULL && mm_now_ms() - t0 < timeout_ms) {
            int done = 0;
            if (MPI_Test(q, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
            if (!done) nanosleep(&(struct timespec){0, 1000000}, NULL);
        }
        if (*q != MPI_REQUEST_NULL) MPI_Request_free(q);
    }
}
