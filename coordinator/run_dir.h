/* What the coordinator tells its launcher's watchdog (deploy/launch.sh), as files in
 * $MM_RUN_DIR: coordinator.pid ("pid host") as soon as it runs (so the watchdog knows when rank 0 is
 * gone while mpiexec lingers), and ready once it serves: one "rank host pid" line per
 * rank, 0 first, so that a broken job can be torn down on every host. Without
 * MM_RUN_DIR nothing is written. Failing to write is logged, never fatal. */
#ifndef MM_COORD_RUN_DIR_H
#define MM_COORD_RUN_DIR_H

#include "mpi_driver.h"

void mm_run_dir_write_pid(void);
void mm_run_dir_write_ready(const mm_mpi_driver *drv);

#endif
