/* The NCCL activation transport (device memory) for CUDA stages: stage ranks 1..P
 * form one NCCL communicator (NCCL rank = world rank - 1; the coordinator, rank 0,
 * takes no part). Rank 1 makes the unique id and sends it to the other stages over
 * MPI point-to-point, so the coordinator need not join a collective. Every
 * send/recv is an ncclGroup on the transport's own stream, ordered after the compute
 * stream's kernels by an event, and waited for before returning (transport.h's
 * blocking contract). Shapes come from the step plan both sides run. */
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_check.h"
#include "pipeline/pipeline_mpi.h"
#include "transport.h"

#define NCCL_CHECK(x)                                                                              \
    do {                                                                                           \
        ncclResult_t nccl_r_ = (x);                                                                \
        if (nccl_r_ != ncclSuccess) return MM_ERROR(MM_ERR_INTERNAL, "NCCL %s: %s", #x, ncclGetErrorString(nccl_r_)); \
    } while (0)

typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;  /* NCCL's, dedicated */
    cudaStream_t compute; /* the stage backend's; NULL: wait for the whole device */
    cudaEvent_t ready;
    int device;
} nccl_ctx;

/* Makes this rank's data ready for the NCCL stream: after every kernel so far. */
static mm_status order_after_compute(nccl_ctx *c) {
    if (!c->compute) {
        CUDA_CHECK(cudaDeviceSynchronize());
        return MM_OK;
    }
    CUDA_CHECK(cudaEventRecord(c->ready, c->compute));
    CUDA_CHECK(cudaStreamWaitEvent(c->stream, c->ready, 0));
    return MM_OK;
}

static mm_status nccl_xfer(mm_transport *t, int peer, float *x, size_t n, int send) {
    nccl_ctx *c = t->ctx;
    CHECK(order_after_compute(c));
    NCCL_CHECK(ncclGroupStart());
    if (send) NCCL_CHECK(ncclSend(x, n, ncclFloat32, peer - 1, c->comm, c->stream));
    else NCCL_CHECK(ncclRecv(x, n, ncclFloat32, peer - 1, c->comm, c->stream));
    NCCL_CHECK(ncclGroupEnd());
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return MM_OK;
}

static mm_status nccl_send(mm_transport *t, int peer, const float *x, size_t n) {
    return nccl_xfer(t, peer, (float *)x, n, 1);
}

static mm_status nccl_recv(mm_transport *t, int peer, float *x, size_t n) { return nccl_xfer(t, peer, x, n, 0); }

static void nccl_free(mm_transport *t) {
    if (!t) return;
    nccl_ctx *c = t->ctx;
    if (c) {
        if (c->comm) ncclCommDestroy(c->comm);
        if (c->ready) cudaEventDestroy(c->ready);
        if (c->stream) cudaStreamDestroy(c->stream);
        free(c);
    }
    free(t);
}

static const mm_transport_ops NCCL_OPS = {"nccl", nccl_send, nccl_recv, nccl_free};

static mm_status nccl_setup(nccl_ctx *c, int rank, int size) {
    int nranks = size - 1, me = rank - 1;
    ncclUniqueId id;
    if (me == 0) {
        NCCL_CHECK(ncclGetUniqueId(&id));
        for (int r = 2; r < size; r++)
            MPI_CHECK(MPI_Send(&id, (int)sizeof id, MPI_BYTE, r, MM_TAG_NCCL_ID, MPI_COMM_WORLD));
    } else {
        MPI_CHECK(MPI_Recv(&id, (int)sizeof id, MPI_BYTE, 1, MM_TAG_NCCL_ID, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
    }
    CUDA_CHECK(cudaSetDevice(c->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming));
    NCCL_CHECK(ncclCommInitRank(&c->comm, nranks, id, me));
    return MM_OK;
}

mm_status mm_transport_nccl_init(int rank, int size, int device, mm_transport **out) {
    if (rank < 1 || size < 2) return MM_ERROR(MM_ERR_INVALID, "NCCL transport: rank %d of %d is not a stage", rank, size);
    mm_transport *t = calloc(1, sizeof *t);
    nccl_ctx *c = calloc(1, sizeof *c);
    if (!t || !c) {
        free(t), free(c);
        return MM_ERROR(MM_ERR_NOMEM, "NCCL transport");
    }
    t->ops = &NCCL_OPS, t->ctx = c, c->device = device;
    mm_status s = nccl_setup(c, rank, size);
    if (s != MM_OK) {
        nccl_free(t);
        return s;
    }
    *out = t;
    return MM_OK;
}

void mm_transport_nccl_bind_stream(mm_transport *t, void *compute_stream) {
    if (t && t->ops == &NCCL_OPS) ((nccl_ctx *)t->ctx)->compute = (cudaStream_t)compute_stream;
}

int mm_local_rank(int world_rank) {
    const char *vars[] = {"MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PMI_LOCAL_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return world_rank;
}
