/* Who may join the pools: a ZeroMQ ZAP handler (RFC 27) for the coordinator's context.
 * With CURVE on the pools' ROUTER sockets, libzmq asks it about every connecting peer
 * during the handshake; it admits only the CURVE public keys of pool_authorized_keys, so
 * a worker with a wrong or missing key is refused before it can see any job. Without
 * a ZAP handler libzmq's CURVE admits every key, so this must run before the pools bind. */
#ifndef MM_COORD_POOL_ZAP_H
#define MM_COORD_POOL_ZAP_H

#include "common/status.h"

typedef struct mm_pool_zap mm_pool_zap;

/* Binds inproc://zeromq.zap.01 in zctx and answers from its own thread. The thread ends
 * when the context is terminated (zmq_ctx_term), after which mm_pool_zap_free joins it. */
mm_status mm_pool_zap_start(void *zctx, const char *authorized_keys_path, mm_pool_zap **out);
void mm_pool_zap_free(mm_pool_zap *z);

#endif
