/* See pipeline_mpi.h. */
#include "pipeline_mpi.h"

#include <stdlib.h>
#include <time.h>

#include "common/clock.h"

mm_status mm_mpi_status(int rc, const char *file, int line, const char *what) {
    if (rc == MPI_SUCCESS) return MM_OK;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len] = 0;
    return mm_error_set(MM_ERR_IO, file, line, "%s: %s", what, msg);
}

mm_status mm_mpi_init(int *argc, char ***argv, int *rank, int *size) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    if (provided < MPI_THREAD_FUNNELED)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "MPI provides thread level %d, FUNNELED (%d) is needed", provided,
                        MPI_THREAD_FUNNELED);
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, size));
    return MM_OK;
}

/* MPICH has no blocking wait that sleeps (a blocked MPI_Recv polls a core), so waits
 * poll with sleeps between: spin briefly (latency), then sleep in growing steps up to
 * 200 us, and once the wait is long, for 1/64 of the time waited so far, up to 100 ms.
 * A busy pipeline sees the short steps (a step's wait is a few ms: at most ~1.6% late);
 * an idle stage wakes 10 times a second instead of 5000 (each poll runs MPI's progress
 * engine, ~20-40 us here; bench/idle_cpu.sh: 4.7% of a core per idle stage before,
 * about 0.1% after), and a plan after more than 6 s of idleness is at most 100 ms late. */
#define WAIT_SPINS 200
#define WAIT_STEP_NS 2000L
#define WAIT_SHORT_MAX_NS 200000L
#define WAIT_LONG_MAX_NS 100000000L
#define WAIT_LONG_FRACTION 64

typedef struct {
    int spins;
    double t0_ms;
    double hook_ms; /* when the wait hook last ran */
} waiter;

#define HOOK_EVERY_MS 5.0
static mm_mpi_wait_hook g_hook;
static void *g_hook_user;

void mm_mpi_set_wait_hook(mm_mpi_wait_hook hook, void *user) {
    g_hook = hook;
    g_hook_user = user;
}

mm_status mm_mpi_run_wait_hook(void) {
    static double last_ms;
    static int in_hook;
    if (!g_hook || in_hook || mm_now_ms() - last_ms < HOOK_EVERY_MS) return MM_OK;
    in_hook = 1;
    mm_status s = g_hook(g_hook_user);
    in_hook = 0;
    last_ms = mm_now_ms();
    return s;
}

static void waiter_start(waiter *w) {
    w->spins = 0;
    w->t0_ms = w->hook_ms = mm_now_ms();
}

/* Sleeps a little (see above) and runs the wait hook when due. */
static mm_status waiter_pause(waiter *w) {
    if (++w->spins < WAIT_SPINS) return MM_OK;
    if (g_hook && mm_now_ms() - w->hook_ms >= HOOK_EVERY_MS) {
        static int in_hook; /* the hook's own MPI calls never wait, but never recurse */
        if (!in_hook) {
            in_hook = 1;
            mm_status s = g_hook(g_hook_user);
            in_hook = 0;
            w->hook_ms = mm_now_ms();
            if (s != MM_OK) return s;
        }
    }
    long ns = (w->spins - WAIT_SPINS) * WAIT_STEP_NS;
    if (ns > WAIT_SHORT_MAX_NS) ns = WAIT_SHORT_MAX_NS;
    double waited_ns = (mm_now_ms() - w->t0_ms) * 1e6;
    double share = waited_ns / WAIT_LONG_FRACTION;
    if (share > ns) ns = share > WAIT_LONG_MAX_NS ? WAIT_LONG_MAX_NS : (long)share;
    struct timespec t = {0, ns};
    nanosleep(&t, NULL);
    return MM_OK;
}

mm_status mm_mpi_wait(MPI_Request *req) {
    int done = 0;
    waiter w;
    waiter_start(&w);
    for (;;) {
        MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE));
        if (done) return MM_OK;
        CHECK(waiter_pause(&w));
    }
}

static mm_status recv_probed(MPI_Status *st, uint8_t **buf, size_t *len) {
    int count = 0;
    MPI_CHECK(MPI_Get_count(st, MPI_BYTE, &count));
    *buf = malloc(count > 0 ? (size_t)count : 1);
    CHECK(CHECK_ALLOC(*buf));
    mm_status s = mm_mpi_status(MPI_Recv(*buf, count, MPI_BYTE, st->MPI_SOURCE, st->MPI_TAG, MPI_COMM_WORLD, st),
                                __FILE__, __LINE__, "MPI_Recv");
    if (s != MM_OK) {
        free(*buf);
        *buf = NULL;
        return s;
    }
    *len = (size_t)count;
    return MM_OK;
}

mm_status mm_mpi_poll_msg(int src, int tag, uint8_t **buf, size_t *len, MPI_Status *st, int *got) {
    *got = 0;
    MPI_CHECK(MPI_Iprobe(src, tag, MPI_COMM_WORLD, got, st));
    if (!*got) return MM_OK;
    return recv_probed(st, buf, len);
}

mm_status mm_mpi_recv_msg(int src, int tag, uint8_t **buf, size_t *len, MPI_Status *st) {
    int got = 0;
    waiter w;
    waiter_start(&w);
    for (;;) {
        MPI_CHECK(MPI_Iprobe(src, tag, MPI_COMM_WORLD, &got, st));
        if (got) return recv_probed(st, buf, len);
        CHECK(waiter_pause(&w));
    }
}

mm_status mm_mpi_send_msg(int dst, int tag, const void *buf, size_t len) {
    if (len > (size_t)INT32_MAX) return MM_ERROR(MM_ERR_INVALID, "MPI message of %zu bytes", len);
    MPI_Request req;
    MPI_CHECK(MPI_Isend(buf, (int)len, MPI_BYTE, dst, tag, MPI_COMM_WORLD, &req));
    return mm_mpi_wait(&req);
}

void mm_mpi_finalize(double timeout_ms) {
    MPI_Request req;
    if (MPI_Ibarrier(MPI_COMM_WORLD, &req) != MPI_SUCCESS) return;
    double t0 = mm_now_ms();
    for (int done = 0; !done;) {
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return;
        if (!done && mm_now_ms() - t0 > timeout_ms) return;
        if (!done) nanosleep(&(struct timespec){0, 200000}, NULL);
    }
    MPI_Finalize();
}
