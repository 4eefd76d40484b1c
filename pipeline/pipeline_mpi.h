/* MPI plumbing shared by the coordinator (rank 0) and the stages (ranks 1..P): the
 * message tags, thread-level checking, error strings with file:line, and waits that
 * poll politely (MPICH's blocking calls spin a core; on a 2-core machine P spinning
 * stages would starve the ones that compute). One thread per process calls these. */
#ifndef MM_PIPELINE_MPI_H
#define MM_PIPELINE_MPI_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

enum {
    MM_TAG_HELLO = 1, /* stage -> 0: StageHello after loading */
    MM_TAG_PLAN,      /* 0 -> every stage: StepPlan */
    MM_TAG_RESULT,    /* last stage -> 0: StepResult (any stage on error) */
    MM_TAG_SHUTDOWN,  /* 0 -> every stage: stop */
    MM_TAG_ACT,       /* stage k -> k+1: activations [rows, dim] f32 */
    MM_TAG_STATS,     /* stage -> 0: StageStats, now and then */
    MM_TAG_NCCL_ID,   /* stage 1 -> stages 2..P: the NCCL unique id, once, before the first plan */
    MM_TAG_BEAT,      /* 0 <-> every stage: a heartbeat when nothing else went out (liveness.h) */
    MM_TAG_BYE,       /* stage -> 0: after SHUTDOWN, its last beat has left: both may finalize */
};

/* MPI_Init_thread asking for FUNNELED; fails unless FUNNELED or better is provided.
 * Errors on MPI_COMM_WORLD are returned, not fatal. */
mm_status mm_mpi_init(int *argc, char ***argv, int *rank, int *size);
/* MPI return code -> mm_status with MPI's message and the caller's file:line. */
mm_status mm_mpi_status(int rc, const char *file, int line, const char *what);
/* Returns the failure of an MPI call from the enclosing function, as CHECK does. */
#define MPI_CHECK(call) CHECK(mm_mpi_status((call), __FILE__, __LINE__, #call))

/* Called by every wait below between its polls once it is no longer spinning (at most
 * every few ms); a non-OK status ends the wait with that status. The stages beat and
 * watch the coordinator's liveness here, so no wait outlives a dead peer. NULL: none. */
typedef mm_status (*mm_mpi_wait_hook)(void *user);
void mm_mpi_set_wait_hook(mm_mpi_wait_hook hook, void *user);
/* Runs the wait hook now if it is due (the same rate limit as in the waits), outside any
 * wait: between the blocks of a long computation. MM_OK when there is none. */
mm_status mm_mpi_run_wait_hook(void);

/* A clean MPI_Finalize of every rank together: first a nonblocking barrier of all ranks
 * (up to timeout_ms), so that no rank enters MPI_Finalize -- whose endpoint flushes
 * need the peers' progress -- while a peer already sits in finalize's process-manager
 * barrier, not progressing (a hang seen over UCX tcp); if the barrier does not complete
 * in time (a rank is gone), MPI_Finalize is skipped: the process just exits. */
void mm_mpi_finalize(double timeout_ms);

/* Waits for req, polling with short sleeps. */
mm_status mm_mpi_wait(MPI_Request *req);
/* Waits for a message from src (or MPI_ANY_SOURCE) with tag (or MPI_ANY_TAG) and
 * receives it whole: *buf malloc'd (caller frees). */
mm_status mm_mpi_recv_msg(int src, int tag, uint8_t **buf, size_t *len, MPI_Status *st);
/* Non-blocking check: is a message from src with tag there? If so, receives it. */
mm_status mm_mpi_poll_msg(int src, int tag, uint8_t **buf, size_t *len, MPI_Status *st, int *got);
/* Sends len bytes and waits (politely) until the buffer may be reused. */
mm_status mm_mpi_send_msg(int dst, int tag, const void *buf, size_t len);

#endif
