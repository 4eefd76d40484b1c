/* A small blocking gRPC client on the C core API, shared by mmctl, bench/serve and the
 * integration tests: one call = one completion queue, so any number of threads may
 * call at once over one channel. Messages are raw protobuf bytes. */
#ifndef MM_CLIENT_H
#define MM_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct mm_client mm_client;

/* The environment decides how to reach a secured service (README, Security):
 * MM_TLS_CA=FILE (TLS, trusting that CA), MM_TLS_CERT + MM_TLS_KEY (a client certificate),
 * MM_API_KEY=KEY (sent as "authorization: Bearer KEY" on every call). */
mm_status mm_client_open(const char *target, mm_client **out);
void mm_client_close(mm_client *c);

/* Called for each response message; return non-zero to cancel the call. */
typedef int (*mm_client_on_msg)(void *user, const uint8_t *data, size_t len);

/* Calls method ("/pkg.Service/Method") with one request message and delivers every
 * response message to on_msg. timeout_s <= 0: no deadline. Returns the gRPC status
 * code; msg gets the status details. */
int mm_client_call(mm_client *c, const char *method, const void *req, size_t len, double timeout_s,
                   mm_client_on_msg on_msg, void *user, char *msg, size_t cap);

/* Name of a gRPC status code ("OK", "INVALID_ARGUMENT", ...). */
const char *mm_grpc_code_name(int code);

#endif
