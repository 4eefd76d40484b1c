/* See generate_request.h. */
#include "generate_request.h"

#include <stdlib.h>

mm_status mm_generate_request_pack(const mm_generate_args *a, uint8_t **buf, size_t *len) {
    const size_t n_parts = a->n_images + 1;
    Metamorph__V1__ContentPart *parts = calloc(n_parts, sizeof *parts); /* [n_images + 1]: images, then text */
    Metamorph__V1__ContentPart **part_ptrs = calloc(n_parts, sizeof *part_ptrs);
    mm_status s = MM_OK;
    if (!parts || !part_ptrs) {
        s = MM_ERROR(MM_ERR_NOMEM, "out of memory building a request of %zu parts", n_parts);
        goto out;
    }
    for (size_t i = 0; i < n_parts; i++) {
        metamorph__v1__content_part__init(&parts[i]);
        if (i < a->n_images) {
            parts[i].kind_case = METAMORPH__V1__CONTENT_PART__KIND_IMAGE;
            parts[i].image.data = (uint8_t *)a->images[i], parts[i].image.len = a->image_lens[i];
        } else {
            parts[i].kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT;
            parts[i].text = (char *)a->prompt;
        }
        part_ptrs[i] = &parts[i];
    }
    Metamorph__V1__ChatMessage msg = METAMORPH__V1__CHAT_MESSAGE__INIT, *msgs[1] = {&msg};
    msg.role = (char *)"user";
    msg.n_parts = n_parts, msg.parts = part_ptrs;
    Metamorph__V1__GenerateRequest req = METAMORPH__V1__GENERATE_REQUEST__INIT;
    req.n_messages = 1, req.messages = msgs;
    req.sampling = (Metamorph__V1__SamplingParams *)a->sampling;
    req.image = (Metamorph__V1__ImageParams *)a->image;
    req.generate_image = a->generate_image;
    if (a->request_id) req.request_id = (char *)a->request_id;
    *len = metamorph__v1__generate_request__get_packed_size(&req);
    *buf = malloc(*len ? *len : 1);
    if (*buf) metamorph__v1__generate_request__pack(&req, *buf);
    else s = MM_ERROR(MM_ERR_NOMEM, "out of memory packing a request of %zu bytes", *len);
out:
    free(parts), free(part_ptrs);
    return s;
}
