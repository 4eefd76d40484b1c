/* The OpenAI-compatible door's request side: a JSON body of /v1/chat/completions,
 * /v1/completions or /v1/images/generations becomes the same GenerateRequest a gRPC
 * client would send (validate.c then checks it exactly as for gRPC), plus the few
 * things only HTTP has (streaming, usage chunks, how many images). Pure: no sockets,
 * no threads, so malformed bodies are tested alone under AddressSanitizer.
 *
 * Choices, where OpenAI's API leaves them to the server (documented in the README):
 *  - omitted temperature = 1 and top_p = 1 (OpenAI's defaults), omitted seed = a random
 *    one; /v1/completions' omitted max_tokens = 16 (OpenAI's), chat's = the server's.
 *  - an image is asked for as OpenAI asks for audio, and as OpenRouter and other
 *    gateways ask for images: "modalities": ["text", "image"]; generated images come
 *    back as content parts {"type": "image_url", "image_url": {"url": "data:image/png;
 *    base64,..."}} as vLLM-Omni returns them.
 *  - input images only as data: URLs (PNG or JPEG); the server never fetches a URL.
 *  - extensions: top_k, return_token_ids (vLLM's name), num_inference_steps,
 *    guidance_scale, sampler, image_seed, timeout (seconds: the request's deadline). */
#ifndef MM_COORD_OPENAI_REQUEST_H
#define MM_COORD_OPENAI_REQUEST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/metamorph.pb-c.h"

#define MM_OAI_MAX_IMAGES_N 8 /* /v1/images/generations: images per request at most */

typedef enum { MM_OAI_CHAT = 1, MM_OAI_COMPLETION, MM_OAI_IMAGES } mm_oai_kind;

typedef struct {
    const char *model_name;     /* the served model's id (GET /v1/models) */
    int32_t image_side;         /* pixels of a generated image (square); 0: no image generation */
    int32_t image_tokens;       /* visual tokens per image (the images endpoint stops after them) */
} mm_oai_limits;

typedef struct {
    int http_status;            /* 400, 404, 413, ... */
    const char *type;           /* OpenAI's error type, e.g. "invalid_request_error" */
    char param[64];             /* the offending field, "" when none */
    char message[512];
} mm_oai_error;

typedef struct {
    mm_oai_kind kind;
    Metamorph__V1__GenerateRequest g;   /* borrowed strings point into root */
    Metamorph__V1__SamplingParams sampling;
    Metamorph__V1__ImageParams image;
    int stream, include_usage, return_token_ids;
    int n;                      /* images endpoint: images asked for (each its own request) */
    uint64_t image_seed;        /* images endpoint: image k uses image_seed + k */
    double timeout_s;           /* 0: no deadline */
    const char *model;          /* as the client named it ("" when absent) */
    /* storage behind g */
    json_t *root;
    Metamorph__V1__ChatMessage *msgs;   /* [g.n_messages] */
    Metamorph__V1__ChatMessage **msg_ptrs;
    Metamorph__V1__ContentPart *parts;  /* [n_parts] */
    Metamorph__V1__ContentPart **part_ptrs;
    size_t n_parts;
    char **stop;                /* [sampling.n_stop] borrowed */
} mm_oai_request;

/* Parses body (len bytes) for kind. Returns 0 and *out, or an HTTP status with err. */
int mm_oai_request_parse(mm_oai_kind kind, const char *body, size_t len, const mm_oai_limits *lim,
                         mm_oai_request **out, mm_oai_error *err);
void mm_oai_request_free(mm_oai_request *r);

/* The OpenAI error for a gRPC status code and message (what validate.c and the
 * scheduler thread report): 400, 429, 503, 504, ... */
void mm_oai_error_from_grpc(int grpc_code, const char *message, mm_oai_error *err);

#endif
