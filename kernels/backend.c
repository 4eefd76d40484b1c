/* Backend selection by name. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cuda/backend_cuda.h"

mm_status mm_backend_init(const char *name, int n_threads, mm_backend **out) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (!strcmp(name, "cpu")) return mm_backend_cpu_init(n_threads, out);
    if (!strcmp(name, "cpu-ref")) return mm_backend_cpu_ref_init(out);
    if (!strcmp(name, "cuda")) return mm_backend_cuda_init(0, out);
    if (!strncmp(name, "cuda:", 5)) { /* "cuda:N": GPU N (a pipeline rank picks its local GPU) */
        char *end;
        long dev = strtol(name + 5, &end, 10);
        if (end != name + 5 && !*end && dev >= 0 && dev < 1024) return mm_backend_cuda_init((int)dev, out);
    }
    return MM_ERROR(MM_ERR_INVALID, "unknown backend '%s' (cpu, cpu-ref, cuda, cuda:N)", name);
}

void mm_backend_free(mm_backend *be) {
    if (be) be->ops->free(be);
}
