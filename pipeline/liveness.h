/* The pipeline's own liveness, not hydra's: the coordinator (rank 0) and every stage
 * hear from each other at least every period, and a peer silent past the bound
 * (stage_liveness_ms) counts as dead -- killed, stopped, or its host cut off -- whatever
 * hydra does or fails to do (its SIGUSR1 does not reach the survivors when the dead
 * rank was alone on its host). Every message from a peer counts: plans, results and
 * statistics are the heartbeats while busy; an explicit BEAT goes out only when nothing
 * else went to that peer for a period. Nothing here blocks: a beat is an MPI_Isend that
 * is only ever tested, and no new beat is posted to a peer whose last one has not left,
 * so a dead or unreachable peer never stalls the caller. One thread per process. */
#ifndef MM_PIPELINE_LIVENESS_H
#define MM_PIPELINE_LIVENESS_H

#include <mpi.h>

#include "common/status.h"
#include "serve_config.h"

/* beats per bound: a peer is declared dead after missing about this many */
#define MM_LIVENESS_BEATS_PER_BOUND 5
/* a tick does its MPI calls at most this often (the coordinator's loop turns every few
 * microseconds while busy, and each MPI poll runs the progress engine, ~20-40 us here) */
#define MM_LIVENESS_TICK_MS 5.0

typedef struct {
    int watched;        /* heard from once: silence past the bound is death */
    double heard_ms;    /* last message from it */
    double sent_ms;     /* last message to it */
    MPI_Request beat;   /* the beat still leaving, MPI_REQUEST_NULL when none */
} mm_peer_liveness;

typedef struct {
    int size;           /* world size: peers are ranks 0..size-1 */
    double bound_ms, period_ms;
    mm_peer_liveness peer[MM_MAX_STAGES + 1];
    char beat_byte;     /* what a beat carries (nothing: its arrival is the news) */
    int quiet;          /* settled: no beats go out any more */
    double ticked_ms;   /* last tick that did its MPI calls */
} mm_liveness;

void mm_liveness_init(mm_liveness *l, int size, int bound_ms);
/* A message came from rank: it is alive, and watched from now on. */
void mm_liveness_heard(mm_liveness *l, int rank);
/* A message went to rank (no beat needed this period). */
void mm_liveness_sent(mm_liveness *l, int rank);
/* Takes in the beats that arrived, sends the beats due to the watched peers, and fails
 * when a watched peer has been silent past the bound (*silent_rank its rank, else -1;
 * an MPI error leaves it -1). */
mm_status mm_liveness_tick(mm_liveness *l, int *silent_rank);
/* Milliseconds since rank was last heard from. */
double mm_liveness_silence_ms(const mm_liveness *l, int rank);
/* Before a clean MPI_Finalize: no more beats, and those still leaving get up to
 * timeout_ms to complete (an unfinished send makes MPI_Finalize wait on a peer that may
 * already sit in finalize's barrier, not progressing: a hang seen over UCX tcp); any
 * left after that are let go. Ticks after it only listen. */
void mm_liveness_settle(mm_liveness *l, double timeout_ms);
/* No beats go out any more (ticks only listen); those leaving are left to settle. */
void mm_liveness_quiet(mm_liveness *l);

#endif
