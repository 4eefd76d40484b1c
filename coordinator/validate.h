/* Turns a decoded GenerateRequest into a tokenized mm_request, or into a gRPC status
 * code with a message that says which field is wrong and why. Runs on the gRPC thread
 * (tokenizing is cheap and needs no request state). */
#ifndef MM_COORD_VALIDATE_H
#define MM_COORD_VALIDATE_H

#include <stddef.h>

#include "messages.h"
#include "model/tokenizer.h"
#include "proto/metamorph.pb-c.h"

typedef struct {
    const mm_tokenizer *tok;
    int32_t max_context;      /* tokens a sequence may hold (model and KV cache) */
    int32_t vocab_size;
    int32_t max_new_tokens;   /* default */
    int32_t max_images;
    int32_t n_image_tokens;   /* prompt rows per image (num_image_tokens) */
    int32_t max_stop_strings;
    int32_t image_steps;      /* diffusion steps, default (the serve config's image_steps) */
    int32_t image_start_id;   /* -1 if the tokenizer has none */
    int32_t bos_id;           /* raw prompts: the config's BOS (-1: the tokenizer's) */
    int vision_input;         /* an encoder can turn image parts into visual tokens */
    int image_generation;     /* the last stage has a vision head */
} mm_limits;

/* Returns a grpc_status_code: 0 and *out on success, else msg says why. */
int mm_request_build(const Metamorph__V1__GenerateRequest *g, const mm_limits *lim, mm_request **out, char *msg,
                     size_t cap);

#endif
