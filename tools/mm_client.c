/* See mm_client.h. Batches: the sends plus RECV_INITIAL_METADATA, then one
 * RECV_MESSAGE at a time until the stream ends, then RECV_STATUS_ON_CLIENT. */
#include "mm_client.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/pem_file.h"

struct mm_client {
    grpc_channel *ch;
    char *authorization; /* "Bearer KEY" from MM_API_KEY, or NULL */
};

/* TLS credentials from MM_TLS_CA (the CA that signed the server's certificate) and, for
 * mutual TLS, MM_TLS_CERT + MM_TLS_KEY (this client's); plain text without MM_TLS_CA. */
static mm_status channel_credentials(grpc_channel_credentials **out) {
    const char *ca = getenv("MM_TLS_CA"), *cert = getenv("MM_TLS_CERT"), *key = getenv("MM_TLS_KEY");
    if (!ca || !ca[0]) {
        *out = grpc_insecure_credentials_create();
        return MM_OK;
    }
    char *ca_pem = NULL, *cert_pem = NULL, *key_pem = NULL;
    mm_status s = mm_pem_file_read("MM_TLS_CA", ca, &ca_pem);
    if (s == MM_OK && cert && cert[0]) s = mm_pem_file_read("MM_TLS_CERT", cert, &cert_pem);
    if (s == MM_OK && cert_pem) s = mm_pem_file_read("MM_TLS_KEY", key ? key : "", &key_pem);
    if (s == MM_OK) {
        grpc_ssl_pem_key_cert_pair pair = {key_pem, cert_pem};
        *out = grpc_ssl_credentials_create(ca_pem, cert_pem ? &pair : NULL, NULL, NULL);
        if (!*out) s = MM_ERROR(MM_ERR_INVALID, "TLS credentials from MM_TLS_CA / MM_TLS_CERT were refused");
    }
    if (key_pem) memset(key_pem, 0, strlen(key_pem));
    free(ca_pem), free(cert_pem), free(key_pem);
    return s;
}

/* "HOST:PORT" ("[v6]:PORT", or gRPC's "unix:PATH"): gRPC itself would take "localhost"
 * as port 443 and "http://h:1" as a DNS name, and say so only in resolver jargon. */
static int target_ok(const char *t) {
    if (!strncmp(t, "unix:", 5)) return t[5] != 0;
    const char *colon = strrchr(t, ':');
    if (!colon || colon == t || !colon[1] || strstr(t, "://")) return 0;
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    return 1;
}

mm_status mm_client_open(const char *target, mm_client **out) {
    if (!target_ok(target))
        return MM_ERROR(MM_ERR_INVALID, "server address \"%s\": want HOST:PORT, e.g. 127.0.0.1:50051", target);
    mm_client *c = calloc(1, sizeof *c);
    CHECK(CHECK_ALLOC(c));
    grpc_init();
    grpc_arg arg = {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, .value.integer = 1 << 30};
    grpc_channel_args args = {1, &arg};
    grpc_channel_credentials *creds = NULL;
    mm_status s = channel_credentials(&creds);
    if (s != MM_OK) {
        free(c);
        grpc_shutdown();
        return s;
    }
    c->ch = grpc_channel_create(target, creds, &args);
    grpc_channel_credentials_release(creds);
    const char *key = getenv("MM_API_KEY");
    if (c->ch && key && key[0] && (c->authorization = malloc(strlen(key) + 8)))
        sprintf(c->authorization, "Bearer %s", key);
    if (!c->ch) {
        free(c);
        grpc_shutdown();
        return MM_ERROR(MM_ERR_IO, "cannot create a channel to %s", target);
    }
    *out = c;
    return MM_OK;
}

void mm_client_close(mm_client *c) {
    if (!c) return;
    grpc_channel_destroy(c->ch);
    free(c->authorization);
    free(c);
    grpc_shutdown();
}

static int run_batch(grpc_call *call, grpc_completion_queue *cq, const grpc_op *ops, size_t n) {
    int tag;
    if (grpc_call_start_batch(call, ops, n, &tag, NULL) != GRPC_CALL_OK) return 0;
    grpc_event ev = grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

int mm_client_call(mm_client *c, const char *method, const void *req, size_t len, double timeout_s,
                   mm_client_on_msg on_msg, void *user, char *msg, size_t cap) {
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    gpr_timespec deadline = timeout_s > 0 ? gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                                         gpr_time_from_micros((int64_t)(timeout_s * 1e6), GPR_TIMESPAN))
                                          : gpr_inf_future(GPR_CLOCK_REALTIME);
    grpc_slice method_slice = grpc_slice_from_copied_string(method);
    grpc_call *call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method_slice, NULL, deadline, NULL);
    grpc_slice_unref(method_slice);
    grpc_slice req_slice = grpc_slice_from_copied_buffer(req, len);
    grpc_byte_buffer *req_bb = grpc_raw_byte_buffer_create(&req_slice, 1);
    grpc_slice_unref(req_slice);
    grpc_metadata_array initial_md, trailing_md;
    grpc_metadata_array_init(&initial_md);
    grpc_metadata_array_init(&trailing_md);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    grpc_metadata auth;
    if (c->authorization) {
        memset(&auth, 0, sizeof auth);
        auth.key = grpc_slice_from_static_string("authorization");
        auth.value = grpc_slice_from_static_string(c->authorization);
        ops[0].data.send_initial_metadata.count = 1, ops[0].data.send_initial_metadata.metadata = &auth;
    }
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
    int alive = run_batch(call, cq, ops, 4);
    while (alive) {
        grpc_byte_buffer *bb = NULL;
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &bb;
        if (!run_batch(call, cq, &op, 1) || !bb) break;
        grpc_byte_buffer_reader rd;
        int stop = 0;
        if (grpc_byte_buffer_reader_init(&rd, bb)) {
            grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
            grpc_byte_buffer_reader_destroy(&rd);
            if (on_msg) stop = on_msg(user, GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl));
            grpc_slice_unref(sl);
        }
        grpc_byte_buffer_destroy(bb);
        if (stop) {
            grpc_call_cancel(call, NULL);
            break;
        }
    }
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &trailing_md;
    op.data.recv_status_on_client.status = &status;
    op.data.recv_status_on_client.status_details = &details;
    if (!run_batch(call, cq, &op, 1)) status = GRPC_STATUS_UNKNOWN;
    if (msg && cap) {
        size_t n = GRPC_SLICE_LENGTH(details);
        if (n >= cap) n = cap - 1;
        memcpy(msg, GRPC_SLICE_START_PTR(details), n);
        msg[n] = 0;
    }
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&initial_md);
    grpc_metadata_array_destroy(&trailing_md);
    grpc_byte_buffer_destroy(req_bb);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    return (int)status;
}

const char *mm_grpc_code_name(int code) {
    static const char *names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                  "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                  "UNAUTHENTICATED"};
    return code >= 0 && code < (int)(sizeof names / sizeof names[0]) ? names[code] : "?";
}
