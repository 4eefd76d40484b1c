/* The coordinator's side of the MPI pipeline (rank 0): collects the stages' hellos,
 * sends every step plan to every stage (same plans, same order), polls for results
 * and stage statistics without blocking, watches the stages' liveness (heartbeats both
 * ways, pipeline/liveness.h: a stage silent past stage_liveness_ms is an error of the
 * poll, and no wait of the driver outlives it), and stops the stages. Called only from the
 * scheduler thread (MPI_THREAD_FUNNELED: it is the main thread). */
#ifndef MM_COORD_MPI_DRIVER_H
#define MM_COORD_MPI_DRIVER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "pipeline/serve_config.h"
#include "proto/internal.pb-c.h"

typedef struct {
    int32_t rank, pid, layer_begin, layer_end;
    int32_t block_begin, block_end; /* half-layer blocks (model/llama.h) */
    char host[256];
    double busy_ms;
    uint64_t steps;
} mm_stage_info;

typedef struct mm_mpi_driver mm_mpi_driver;

/* liveness_ms: stage_liveness_ms. */
mm_status mm_mpi_driver_init(int n_stages, int liveness_ms, mm_mpi_driver **out);
void mm_mpi_driver_free(mm_mpi_driver *d);
/* Waits for every stage's hello; gives up when *abort_flag becomes non-zero. */
mm_status mm_mpi_driver_hello(mm_mpi_driver *d, volatile sig_atomic_t *abort_flag);
/* Sends the packed plan to ranks 1..P (takes ownership of buf). */
mm_status mm_mpi_driver_send_plan(mm_mpi_driver *d, uint8_t *buf, size_t len);
/* Progresses sends, takes in stage statistics and heartbeats, sends the beats due, and
 * returns the next step result if one has arrived (*res NULL otherwise; free with
 * step_result__free_unpacked). Fails when a stage has been silent past the bound: the
 * message names its rank, host and pid, in one line fit for a client. */
mm_status mm_mpi_driver_poll(mm_mpi_driver *d, Metamorph__Internal__StepResult **res);
/* Tells every stage to stop (after the last plan); gives up on a silent stage. */
mm_status mm_mpi_driver_shutdown(mm_mpi_driver *d);

int mm_mpi_driver_n_stages(const mm_mpi_driver *d);
const mm_stage_info *mm_mpi_driver_stage(const mm_mpi_driver *d, int k);
/* Capabilities the stages reported: visual inputs (stage 1) and visual outputs (stage P). */
int mm_mpi_driver_has_projector(const mm_mpi_driver *d);
int mm_mpi_driver_has_vision_head(const mm_mpi_driver *d);
int32_t mm_mpi_driver_visual_dim(const mm_mpi_driver *d);

#endif
