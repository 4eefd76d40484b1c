/* See pipeline_mpi.h. */
#include "pipeline_mpi.h"

#include <stdlib.h>
#include <time.h>

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
    CHECK(MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided)));
    if (provided < MPI_THREAD_FUNNELED)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "MPI provides thread level %d, FUNNELED (%d) is needed", provided,
                        MPI_THREAD_FUNNELED);
    CHECK(MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN)));
    CHECK(MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, rank)));
    CHECK(MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, size)));
    return MM_OK;
}

/* Spin briefly (latency), then sleep in growing steps up to 200 us (CPU). */
static void backoff(int *spins) {
    if (++*spins < 200) return;
    long ns = (*spins - 200) * 2000L;
    if (ns > 200000L) ns = 200000L;
    struct timespec t = {0, ns};
    nanosleep(&t, NULL);
}

mm_status mm_mpi_wait(MPI_Request *req) {
    int done = 0, spins = 0;
    for (;;) {
        CHECK(MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE)));
        if (done) return MM_OK;
        backoff(&spins);
    }
}

static mm_status recv_probed(MPI_Status *st, uint8_t **buf, size_t *len) {
    int count = 0;
    CHECK(MPI_CHECK(MPI_Get_count(st, MPI_BYTE, &count)));
    *buf = malloc(count > 0 ? (size_t)count : 1);
    CHECK(CHECK_ALLOC(*buf));
    mm_status s = MPI_CHECK(MPI_Recv(*buf, count, MPI_BYTE, st->MPI_SOURCE, st->MPI_TAG, MPI_COMM_WORLD, st));
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
    CHECK(MPI_CHECK(MPI_Iprobe(src, tag, MPI_COMM_WORLD, got, st)));
    if (!*got) return MM_OK;
    return recv_probed(st, buf, len);
}

mm_status mm_mpi_recv_msg(int src, int tag, uint8_t **buf, size_t *len, MPI_Status *st) {
    int got = 0, spins = 0;
    for (;;) {
        CHECK(MPI_CHECK(MPI_Iprobe(src, tag, MPI_COMM_WORLD, &got, st)));
        if (got) return recv_probed(st, buf, len);
        backoff(&spins);
    }
}

mm_status mm_mpi_send_msg(int dst, int tag, const void *buf, size_t len) {
    if (len > (size_t)INT32_MAX) return MM_ERROR(MM_ERR_INVALID, "MPI message of %zu bytes", len);
    MPI_Request req;
    CHECK(MPI_CHECK(MPI_Isend(buf, (int)len, MPI_BYTE, dst, tag, MPI_COMM_WORLD, &req)));
    return mm_mpi_wait(&req);
}
