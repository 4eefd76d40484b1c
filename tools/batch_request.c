/* See batch_request.h. */
#include "batch_request.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Larger than any service's gRPC receive limit: a file over it is surely a mistake. */
#define MAX_IMAGE_FILE_BYTES ((size_t)1 << 30)

static mm_status read_image_file(const char *path, uint8_t **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        mm_status s = MM_ERROR(MM_ERR_IO, "cannot read image %s: %s", path, f ? "not a regular file" : strerror(errno));
        if (f) fclose(f);
        return s;
    }
    if ((size_t)st.st_size > MAX_IMAGE_FILE_BYTES) {
        fclose(f);
        return MM_ERROR(MM_ERR_INVALID, "image %s is %lld bytes: too large", path, (long long)st.st_size);
    }
    *len = (size_t)st.st_size;
    *data = malloc(*len ? *len : 1);
    size_t got = *data ? fread(*data, 1, *len, f) : 0;
    int err = ferror(f);
    fclose(f);
    if (!*data) return MM_ERROR(MM_ERR_NOMEM, "out of memory reading %s", path);
    if (got != *len || err) {
        free(*data);
        *data = NULL;
        return MM_ERROR(MM_ERR_IO, "cannot read image %s: read %zu of %zu bytes", path, got, *len);
    }
    return MM_OK;
}

mm_status batch_request_pack(const batch_item *it, uint8_t **buf, size_t *len) {
    size_t n_parts = it->n_images + 1;
    Metamorph__V1__ContentPart *parts = calloc(n_parts, sizeof *parts); /* [n_images + 1]: images, then text */
    Metamorph__V1__ContentPart **part_ptrs = calloc(n_parts, sizeof *part_ptrs);
    mm_status s = parts && part_ptrs ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "out of memory");
    size_t n_read = 0;
    for (; s == MM_OK && n_read < it->n_images; n_read++) {
        metamorph__v1__content_part__init(&parts[n_read]);
        parts[n_read].kind_case = METAMORPH__V1__CONTENT_PART__KIND_IMAGE;
        if (it->image_data) { /* a shard member, read with its shard: lent, not copied */
            parts[n_read].image.data = it->image_data, parts[n_read].image.len = it->image_len;
        } else {
            s = read_image_file(it->image_paths[n_read], &parts[n_read].image.data, &parts[n_read].image.len);
        }
        if (s != MM_OK) break;
        part_ptrs[n_read] = &parts[n_read];
    }
    if (s == MM_OK) {
        Metamorph__V1__ContentPart *text = &parts[it->n_images];
        metamorph__v1__content_part__init(text);
        text->kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT;
        text->text = it->prompt;
        part_ptrs[it->n_images] = text;
        Metamorph__V1__ChatMessage msg = METAMORPH__V1__CHAT_MESSAGE__INIT, *msgs[1] = {&msg};
        msg.role = (char *)"user";
        msg.n_parts = n_parts, msg.parts = part_ptrs;
        Metamorph__V1__SamplingParams sampling = it->sampling;
        Metamorph__V1__ImageParams image = it->image;
        Metamorph__V1__GenerateRequest req = METAMORPH__V1__GENERATE_REQUEST__INIT;
        req.n_messages = 1, req.messages = msgs;
        req.sampling = &sampling, req.image = &image;
        req.generate_image = it->task == BATCH_TASK_GENERATE;
        *len = metamorph__v1__generate_request__get_packed_size(&req);
        *buf = malloc(*len ? *len : 1);
        if (*buf) metamorph__v1__generate_request__pack(&req, *buf);
        else s = MM_ERROR(MM_ERR_NOMEM, "out of memory packing a request of %zu bytes", *len);
    }
    for (size_t i = 0; parts && i < n_read && !it->image_data; i++) free(parts[i].image.data);
    free(parts), free(part_ptrs);
    return s;
}
