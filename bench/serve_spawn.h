/* bench/serve --spawn: runs the service under test itself, the way operators do
 * (deploy/launch.sh on a generated config: free loopback ports, both pools empty), then
 * starts pool workers by hand so that the worker count can grow while it serves
 * (mm-encoder / mm-decoder --connect, DESIGN section 2), and waits until the
 * coordinator's metrics show them joined. Every child gets SIGTERM when bench/serve
 * dies. Binaries come from the build tree this bench was built in. */
#ifndef MM_BENCH_SERVE_SPAWN_H
#define MM_BENCH_SERVE_SPAWN_H

#include <limits.h>
#include <sys/types.h>

#include "tools/mm_client.h"

#define SPAWN_MAX_WORKERS 16

enum { SPAWN_ENCODE, SPAWN_DECODE };

typedef struct {
    pid_t launcher;          /* deploy/launch.sh, leader of its own process group */
    char dir[256];           /* temporary directory: service.json, service.log, worker logs */
    char target[64], metrics[64], endpoint[2][64]; /* gRPC, Prometheus, encode/decode pools */
    char model[PATH_MAX];
    int worker_threads;
    pid_t workers[2][SPAWN_MAX_WORKERS];
    int n_workers[2];
    mm_client *cl;           /* to target */
} serve_service;

/* Starts the service on model with `stages` pipeline stages of `threads` threads each
 * and no pool worker; workers get worker_threads; extra_json: more config keys ("" or
 * "\"prefix_cache\": 0"). Waits (up to 120 s) until it serves. 0 on success; -1 with a
 * message on stderr (s is stopped then). */
int serve_spawn_start(serve_service *s, const char *model, int stages, int threads, int worker_threads,
                      const char *extra_json);
/* Starts workers until each pool has n, then waits (up to timeout_s) until the
 * coordinator counts n live workers in each. 0, or -1 with a message on stderr. */
int serve_spawn_workers(serve_service *s, int n, double timeout_s);
/* Stops the workers and the service (SIGTERM; SIGKILL after 15 s) and closes s->cl.
 * keep_logs: s->dir stays (its path on stderr), else it is removed. */
void serve_spawn_stop(serve_service *s, int keep_logs);

#endif
