/* Distinct request images for bench/serve: the coordinator caches visual tokens by a
 * hash of the image bytes, so an encoder-pool benchmark must never send the same bytes
 * twice. Image k is the base image with its first 8 RGB samples (about 3 pixels)
 * overwritten by k, little endian, PNG-encoded again. */
#ifndef MM_BENCH_SERVE_IMAGES_H
#define MM_BENCH_SERVE_IMAGES_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *png;
    size_t len;
} serve_image;

/* Makes images k = first .. first + n - 1 of the base image at path into out[0..n)
 * (free each with serve_images_free). 0 on success, -1 with a message on stderr. */
int serve_images_make(const char *path, uint64_t first, int n, serve_image *out);
void serve_images_free(serve_image *v, int n);

#endif
