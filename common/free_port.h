/* A loopback TCP port for a server that is about to be started by another process
 * (tests, benchmarks, the quick start write it into a config first). A port from
 * bind(port 0) lies in the kernel's ephemeral range, so before our server binds it an
 * outgoing connection (a worker retrying its connect, the MPI launcher, a client) can
 * be given it as its source port and the server's bind fails; that happened in CI.
 * These ports are drawn below the ephemeral range instead, where the kernel never
 * hands out source ports, and each is checked free by binding it once. */
#ifndef MM_FREE_PORT_H
#define MM_FREE_PORT_H

/* A port free on 127.0.0.1 right now, below the ephemeral range, not returned before by
 * this process; -1 when none was found in 500 tries. Thread-safe. */
int mm_free_port(void);

#endif
