/* What the gRPC threads and the scheduler thread hand each other over inproc ZeroMQ
 * sockets: one mm_msg (gRPC -> scheduler) or one mm_reply pointer (scheduler -> gRPC)
 * per ZeroMQ message. Ownership of the pointed-to struct moves with the message. */
#ifndef MM_COORD_MESSAGES_H
#define MM_COORD_MESSAGES_H

#include <stddef.h>
#include <stdint.h>

#include "coordinator/embed_cache.h"
#include "kernels/backend.h"
#include "model/image_params.h"

#define MM_ENDPOINT_REQUESTS "inproc://mm-requests"
#define MM_ENDPOINT_REPLIES "inproc://mm-replies"           /* replies to the gRPC front door */
#define MM_ENDPOINT_HTTP_REPLIES "inproc://mm-http-replies" /* replies to the HTTP front door */

/* Call ids are made by the front doors: the HTTP door's have this bit set, so the
 * scheduler thread sends each reply to the door its call came through. */
#define MM_CALL_ID_HTTP (UINT64_C(1) << 63)

/* A validated, tokenized request. */
typedef struct {
    uint64_t call_id;
    char request_id[129];
    int stream;
    int32_t *prompt;          /* [n_prompt] chat ids, one MM_IMAGE_TOKEN_INDEX per image */
    int32_t n_prompt;
    int32_t n_rows;           /* prompt rows once each image is n_image_tokens visual rows */
    int n_images;             /* image parts, in prompt order */
    uint8_t **image_data;     /* [n_images] PNG/JPEG bytes, freed once encoded */
    size_t *image_len;        /* [n_images] */
    char (*image_where)[64];  /* [n_images] "messages[i].parts[j]", for error messages */
    float *visual;            /* [n_images, n_image_tokens, visual_dim] once encoded, or NULL */
    uint8_t (*image_key)[MM_EMBED_KEY_BYTES]; /* [n_images] content keys (BLAKE2b-256 of the bytes) once submitted, or NULL */
    mm_sampling sampling;
    uint64_t seed;
    int32_t max_new_tokens;
    char **stop;              /* [n_stop] stop strings */
    int n_stop;
    int generate_image;       /* the prompt ends with <image_start> */
    int return_visual_tokens;
    mm_image_params image;    /* decoder: its settings, defaults applied */
    double t_arrival_ms;      /* monotonic clock */
    double deadline_ms;       /* monotonic; 0 = none */
} mm_request;

void mm_request_free(mm_request *r);

typedef enum { MM_MSG_SUBMIT = 1, MM_MSG_CANCEL, MM_MSG_INFO } mm_msg_type;

typedef struct {
    mm_msg_type type;
    uint64_t call_id;
    mm_request *req;          /* MM_MSG_SUBMIT */
} mm_msg;

typedef enum {
    MM_REPLY_DELTA = 1,       /* text / token ids */
    MM_REPLY_IMAGE_STARTED,
    MM_REPLY_IMAGE_READY,     /* one generated image: PNG (decoder pool) and visual tokens */
    MM_REPLY_FINAL,           /* status OK, usage, timings */
    MM_REPLY_ERROR,           /* status code + message */
    MM_REPLY_INFO,            /* packed metamorph.v1.ModelInfo */
    MM_REPLY_STOP,            /* the reply thread ends (sent to every door) */
} mm_reply_type;

typedef struct {
    mm_reply_type type;
    uint64_t call_id;
    char *text;               /* DELTA */
    size_t text_len;
    int32_t *ids;             /* DELTA: [n_ids] */
    int n_ids;
    float *visual;            /* IMAGE_READY: [n_visual, visual_dim] (NULL unless asked) */
    int32_t n_visual, visual_dim, image_index;
    uint8_t *png;             /* IMAGE_READY: [n_png] PNG bytes, NULL when no decoder pool serves */
    size_t n_png;
    const char *finish_reason; /* FINAL (static string) */
    char request_id[129];     /* FINAL */
    int32_t prompt_tokens, completion_tokens, images;
    int32_t cached_tokens;    /* of prompt_tokens: taken from the prefix cache */
    double queue_ms, ttft_ms, total_ms, tokens_per_s;
    int code;                 /* ERROR: grpc_status_code */
    char message[512];
    uint8_t *bytes;           /* INFO */
    size_t n_bytes;
} mm_reply;

void mm_reply_free(mm_reply *r);

#endif
