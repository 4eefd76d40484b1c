/* See access_log.h. */
#include "access_log.h"

#include <grpc/status.h>

#include "common/log.h"

static const char *code_name(int code) {
    static const char *const NAMES[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                        "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                        "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
    return code >= 0 && code <= GRPC_STATUS_UNAUTHENTICATED ? NAMES[code] : "UNKNOWN";
}

void mm_access_log(const mm_access_entry *a) {
    LOG_INFO("request %s %s %s from %s: %s, prompt %d, completion %d, images %d, ttft %.1f ms, total %.1f ms",
             a->request_id[0] ? a->request_id : "-", a->door, a->method, a->peer[0] ? a->peer : "-",
             code_name(a->grpc_code), a->prompt_tokens, a->completion_tokens, a->images, a->ttft_ms, a->total_ms);
}
