/* See runtime.h. */
#include "runtime.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

void mm_runtime_init(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", "2000", 1) != 0) return;
    execv("/proc/self/exe", argv);
    LOG_WARN("could not re-execute with GOMP_SPINCOUNT=2000 (%s); OpenMP threads will spin", strerror(errno));
}
