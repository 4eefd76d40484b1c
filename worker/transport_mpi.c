/* The MPI activation transport (host memory): one message per micro-batch per hop. */
#include <stdlib.h>

#include "pipeline/pipeline_mpi.h"
#include "transport.h"

static mm_status mpi_send(mm_transport *t, int peer, const float *x, size_t n) {
    return mm_mpi_send_msg(peer, MM_TAG_ACT, x, n * sizeof(float));
}

static mm_status mpi_recv(mm_transport *t, int peer, float *x, size_t n) {
    if (n * sizeof(float) > (size_t)INT32_MAX) return MM_ERROR(MM_ERR_INVALID, "activation of %zu floats", n);
    MPI_Request req;
    MPI_CHECK(MPI_Irecv(x, (int)(n * sizeof(float)), MPI_BYTE, peer, MM_TAG_ACT, MPI_COMM_WORLD, &req));
    return mm_mpi_wait(&req);
}

static void mpi_free(mm_transport *t) { free(t); }

static const mm_transport_ops MPI_OPS = {"mpi", mpi_send, mpi_recv, mpi_free};

mm_status mm_transport_mpi_init(mm_transport **out) {
    mm_transport *t = calloc(1, sizeof *t);
    CHECK(CHECK_ALLOC(t));
    t->ops = &MPI_OPS;
    *out = t;
    return MM_OK;
}

void mm_transport_free(mm_transport *t) {
    if (t) t->ops->free(t);
}
