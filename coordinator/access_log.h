/* The operator's access log: one line per finished request, whichever door it came
 * through (gRPC, HTTP), at info level in the service's log format. */
#ifndef MM_COORD_ACCESS_LOG_H
#define MM_COORD_ACCESS_LOG_H

typedef struct {
    const char *door;          /* "grpc", "http" */
    const char *peer;          /* the client's address, "" when unknown */
    const char *method;        /* e.g. "GenerateStream", "/v1/chat/completions" */
    const char *request_id;    /* "" when the request never got one (refused before) */
    int grpc_code;             /* the final status (0 OK, 1 CANCELLED, ...) */
    int prompt_tokens, completion_tokens, images;
    double ttft_ms, total_ms;  /* ttft 0: no token came */
} mm_access_entry;

void mm_access_log(const mm_access_entry *a);

#endif
