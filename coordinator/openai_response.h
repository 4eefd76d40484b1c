/* The OpenAI-compatible door's response side: the scheduler thread's replies (text
 * deltas, images, the final usage) as OpenAI's JSON objects, whole or as stream
 * chunks. Pure: builds jansson values, sends nothing. */
#ifndef MM_COORD_OPENAI_RESPONSE_H
#define MM_COORD_OPENAI_RESPONSE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "messages.h"
#include "openai_request.h"

/* What one request has produced so far, in order: text and images interleave as the
 * model wrote them. */
typedef struct {
    char *text;                 /* [len + 1] every text delta */
    size_t len, cap;
    size_t segment;             /* text[segment, len) follows the last image */
    int32_t *ids;               /* [n_ids] generated ids (a visual token counts as -1) */
    size_t n_ids, cap_ids;
    json_t *parts;              /* content parts closed so far (text before an image, the image;
                                   null while an image started is not decoded yet) */
    size_t *slots;              /* [n_slots] image index -> its place in parts */
    int n_slots;
    json_t *images;             /* images endpoint: [{"b64_json": ...}] */
    int n_images;
} mm_oai_result;

void mm_oai_result_init(mm_oai_result *res);
void mm_oai_result_free(mm_oai_result *res);
/* Adds a DELTA, IMAGE_STARTED or IMAGE_READY reply: an image takes its place in the
 * content where it started, although its PNG arrives after the text that follows it.
 * 0 on success, -1 out of memory. */
int mm_oai_result_add(mm_oai_result *res, const mm_reply *r);

/* OpenAI's finish_reason for ours ("stop", "length", "stop_string"). */
const char *mm_oai_finish_reason(const char *ours);

/* {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}; NULL on OOM. */
json_t *mm_oai_image_part(const uint8_t *png, size_t n);
/* The usage object of a FINAL reply. */
json_t *mm_oai_usage(const mm_reply *final);

typedef struct {
    const char *id;             /* "chatcmpl-..." / "cmpl-..." */
    const char *model;
    long long created;          /* Unix seconds */
} mm_oai_head;

/* The whole response of a chat or completion request. */
json_t *mm_oai_completion_json(mm_oai_kind kind, const mm_oai_head *h, const mm_oai_result *res,
                               const mm_reply *final, int return_token_ids);
/* One stream chunk: a chat delta object (taken), or a completion's text; finish_reason
 * NULL while streaming. */
json_t *mm_oai_chunk_json(mm_oai_kind kind, const mm_oai_head *h, json_t *delta, const char *text,
                          const char *finish_reason);
/* The last chunk when stream_options.include_usage: no choices, the usage. */
json_t *mm_oai_usage_chunk_json(mm_oai_kind kind, const mm_oai_head *h, const mm_reply *final);
/* {"error": {"message", "type", "param", "code"}} */
json_t *mm_oai_error_json(const mm_oai_error *e);
/* GET /v1/models */
json_t *mm_oai_models_json(const char *model, long long created, int32_t max_model_len);

#endif
