/* The gRPC port's doorman (issue 21). The coordinator accepts TCP connections on the
 * gRPC address itself, terminates TLS there (GnuTLS, ALPN "h2", client certificates when
 * asked), checks what each client sends with h2_filter, and hands every connection that
 * has sent the HTTP/2 preface to the gRPC core as a plain-text channel over a socketpair
 * (grpc_server_add_channel_from_fd). Why: Debian's gRPC 1.51 cannot bound a CONTINUATION
 * flood or a Rapid Reset, and a server that cannot is open to anyone who can connect.
 * What one client can make the coordinator hold is bounded here: two 16 KiB relay
 * buffers and a TLS session per connection, max_per_peer connections per address,
 * max_connections in all, a deadline for the handshake and preface, and h2_filter's
 * limits on header blocks and reset/control frame rates. One thread, epoll, level
 * triggered, nonblocking sockets; backpressure both ways (a full buffer stops reading). */
#ifndef MM_COORD_H2_GUARD_H
#define MM_COORD_H2_GUARD_H

#include <stddef.h>

#include "common/status.h"
#include "h2_filter.h"
#include "metrics.h"
#include "tls_files.h"

typedef struct grpc_server grpc_server;

typedef struct {
    const char *listen;        /* "host:port" */
    const mm_tls_files *tls;   /* NULL or no cert: plain text */
    int max_connections;       /* open at once, all peers */
    int max_per_peer;          /* open at once from one IP address */
    int handshake_ms;          /* TLS handshake + HTTP/2 preface must be done this soon */
    mm_h2_limits frames;
    mm_metrics *metrics;       /* NULL: none */
} mm_h2_guard_params;

typedef struct mm_h2_guard mm_h2_guard;

/* Binds the address (an error names "listen" and the address) and reads the TLS files;
 * nothing is accepted yet. */
mm_status mm_h2_guard_open(const mm_h2_guard_params *p, mm_h2_guard **out);
/* Starts serving: connections go to server (registered and started). */
mm_status mm_h2_guard_run(mm_h2_guard *g, grpc_server *server);
/* The client's "ip:port" of a gRPC call whose peer is the inner end ("fd:N"); peer is
 * copied unchanged when it is not one of ours. */
void mm_h2_guard_peer(mm_h2_guard *g, const char *grpc_peer, char *out, size_t cap);
/* No connection is handed to gRPC after this returns (call before the server shuts down;
 * open connections keep relaying so that final replies reach their clients). */
void mm_h2_guard_close_door(mm_h2_guard *g);
/* Stops the thread and closes every connection (any state, NULL included). */
void mm_h2_guard_stop(mm_h2_guard *g);

#endif
