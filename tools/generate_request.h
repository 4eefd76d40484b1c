/* One user turn (images, then text) packed as a metamorph.v1.GenerateRequest: the
 * request mmctl, mmctl batch and the integration tests send. Only the packing; what to
 * ask for (sampling, image parameters) stays with the caller, and the bytes it sends
 * are the caller's (nothing is copied before packing). */
#ifndef MM_GENERATE_REQUEST_H
#define MM_GENERATE_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "proto/metamorph.pb-c.h"

typedef struct {
    const char *prompt;                       /* the text part, after the images */
    const uint8_t *const *images;             /* [n_images] PNG/JPEG bytes (may be NULL when n_images is 0) */
    const size_t *image_lens;                 /* [n_images] */
    size_t n_images;
    const Metamorph__V1__SamplingParams *sampling; /* NULL: none sent (the server's defaults) */
    const Metamorph__V1__ImageParams *image;       /* NULL: none sent */
    int generate_image;                       /* the assistant's turn starts with <image_start> */
    const char *request_id;                   /* NULL: none sent */
} mm_generate_args;

/* *buf (malloc'd, the caller frees) and *len: the packed request of one "user" message. */
mm_status mm_generate_request_pack(const mm_generate_args *a, uint8_t **buf, size_t *len);

#endif
