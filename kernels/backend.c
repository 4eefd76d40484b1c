/* Backend selection by name. */
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
    return MM_ERROR(MM_ERR_INVALID, "unknown backend '%s' (cpu, cpu-ref, cuda)", name);
}

void mm_backend_free(mm_backend *be) {
    if (be) be->ops->free(be);
}
