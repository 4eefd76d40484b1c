/* See run_dir.h. */
#include "run_dir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

/* Writes text to $MM_RUN_DIR/name through a temporary file: readers see all or nothing. */
static void run_file_write(const char *name, const char *text) {
    const char *dir = getenv("MM_RUN_DIR");
    if (!dir || !dir[0]) return;
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int ok = f && fputs(text, f) >= 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) LOG_WARN("MM_RUN_DIR: cannot write %s: %s", path, strerror(errno));
}

void mm_run_dir_write_pid(void) {
    char host[256] = "", text[300];
    gethostname(host, sizeof host - 1);
    snprintf(text, sizeof text, "%d %s\n", (int)getpid(), host);
    run_file_write("coordinator.pid", text);
}

void mm_run_dir_write_ready(const mm_mpi_driver *drv) {
    char host[256] = "", text[64 * (MM_MAX_STAGES + 1) + 4096];
    gethostname(host, sizeof host - 1);
    size_t n = (size_t)snprintf(text, sizeof text, "0 %s %d\n", host, (int)getpid());
    for (int k = 0; k < mm_mpi_driver_n_stages(drv) && n < sizeof text; k++) {
        const mm_stage_info *si = mm_mpi_driver_stage(drv, k);
        n += (size_t)snprintf(text + n, sizeof text - n, "%d %s %d\n", si->rank, si->host, si->pid);
    }
    run_file_write("ready", text);
}
