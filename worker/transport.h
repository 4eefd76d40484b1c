/* Stage-to-stage activation transport: stage k sends its output rows [n, dim] f32 to
 * stage k+1. An interface so the CPU build uses MPI and the CUDA build can use NCCL
 * on device memory; buffers are in the memory of the stage's backend. Blocking: a
 * send returns when the buffer may be reused, a recv when the data is there. */
#ifndef MM_TRANSPORT_H
#define MM_TRANSPORT_H

#include <stddef.h>

#include "common/status.h"

typedef struct mm_transport mm_transport;

typedef struct {
    const char *name;
    mm_status (*send)(mm_transport *t, int peer, const float *x, size_t n);
    mm_status (*recv)(mm_transport *t, int peer, float *x, size_t n);
    void (*free)(mm_transport *t);
} mm_transport_ops;

struct mm_transport {
    const mm_transport_ops *ops;
    void *ctx;
};

/* MPI point-to-point on MPI_COMM_WORLD (host memory), peers are world ranks. */
mm_status mm_transport_mpi_init(mm_transport **out);
/* NCCL between the stage ranks 1..size-1 on GPU `device` (device memory; builds with
 * CUDA and NCCL, MM_HAVE_NCCL). Collective over the stages: every stage calls it. */
mm_status mm_transport_nccl_init(int rank, int size, int device, mm_transport **out);
/* Orders transfers after the kernels of the stage's compute stream (a cudaStream_t). */
void mm_transport_nccl_bind_stream(mm_transport *t, void *compute_stream);
/* This process's rank on its node (MPICH, Open MPI, Slurm env), else world_rank. */
int mm_local_rank(int world_rank);
void mm_transport_free(mm_transport *t);

#endif
