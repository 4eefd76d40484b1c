/* The coordinator's gRPC front end on the C core API (grpc/grpc.h). Two threads, one
 * job each: the completion-queue thread accepts calls (one catch-all request_call;
 * unknown methods get UNIMPLEMENTED), decodes and validates requests and hands them to
 * the scheduler thread; the reply thread turns the scheduler's replies into protobuf
 * messages and statuses. Per-call state lives in a table behind one mutex, so a reply
 * for a call that is gone is simply dropped. It never computes or schedules. */
#ifndef MM_COORD_GRPC_SERVER_H
#define MM_COORD_GRPC_SERVER_H

#include <stdatomic.h>

#include "api_keys.h"
#include "h2_guard.h"
#include "metrics.h"
#include "tls_files.h"
#include "validate.h"

typedef struct {
    const char *listen;       /* "host:port" */
    int max_receive_bytes;
    void *zmq_ctx;            /* the scheduler thread has bound the two inproc endpoints */
    mm_limits limits;
    atomic_int *serving;      /* health: 1 SERVING, 0 NOT_SERVING (set by the scheduler thread) */
    mm_metrics *metrics;      /* request counts by status and durations; NULL: none */
    const mm_tls_files *tls;  /* NULL or no cert: plain text */
    mm_api_keys *keys;        /* NULL: no key needed */
    int health_open;          /* with keys: the health check needs none */
    int guard;                /* 1: h2_guard owns the port (TLS by GnuTLS); 0: gRPC's own port and TLS */
    int max_connections, max_per_peer, handshake_ms; /* with guard: h2_guard.h */
} mm_grpc_params;

typedef struct mm_grpc_server mm_grpc_server;

/* Binds the port and starts both threads. */
mm_status mm_grpc_start(const mm_grpc_params *p, mm_grpc_server **out);
/* The shutdown sequence: the reply thread is told to stop (the scheduler thread has
 * sent MM_REPLY_STOP) and joined, then the server is shut down, every call cancelled,
 * the completion queue drained and destroyed. */
void mm_grpc_stop(mm_grpc_server *s);

#endif
