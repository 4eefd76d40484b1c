/* See batch_request.h. */
#include "batch_request.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "generate_request.h"

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
    uint8_t **images = calloc(it->n_images ? it->n_images : 1, sizeof *images); /* [n_images] */
    size_t *lens = calloc(it->n_images ? it->n_images : 1, sizeof *lens);
    mm_status s = images && lens ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "out of memory");
    size_t n_read = 0;
    for (; s == MM_OK && n_read < it->n_images; n_read++) {
        if (it->image_data) { /* a shard member, read with its shard: lent, not copied */
            images[n_read] = it->image_data, lens[n_read] = it->image_len;
        } else {
            s = read_image_file(it->image_paths[n_read], &images[n_read], &lens[n_read]);
        }
        if (s != MM_OK) break;
    }
    if (s == MM_OK) {
        Metamorph__V1__SamplingParams sampling = it->sampling;
        Metamorph__V1__ImageParams image = it->image;
        mm_generate_args a = {.prompt = it->prompt, .images = (const uint8_t *const *)images, .image_lens = lens,
                              .n_images = it->n_images, .sampling = &sampling, .image = &image,
                              .generate_image = it->task == BATCH_TASK_GENERATE};
        s = mm_generate_request_pack(&a, buf, len);
    }
    for (size_t i = 0; images && i < n_read && !it->image_data; i++) free(images[i]);
    free(images), free(lens);
    return s;
}
