/* See runtime.h. */
#include "runtime.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "log.h"

void mm_runtime_die_with_parent(int sig) {
    if (prctl(PR_SET_PDEATHSIG, sig) != 0) LOG_WARN("PR_SET_PDEATHSIG: %s", strerror(errno));
}

void mm_runtime_init(char **argv) {
    if (getenv("MM_SUPERVISED")) mm_runtime_die_with_parent(SIGTERM);
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", "2000", 1) != 0) return;
    /* the kernel names a process after the file it executes: /proc/self/exe would make
     * every program "exe"; a binary replaced since start reads "PATH (deleted)" */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    const char *path = "/proc/self/exe";
    if (n > 0 && (size_t)n < sizeof self - 1) {
        self[n] = 0;
        if (access(self, X_OK) == 0) path = self;
    }
    execv(path, argv);
    LOG_WARN("could not re-execute %s with GOMP_SPINCOUNT=2000 (%s); OpenMP threads will spin", path, strerror(errno));
}
