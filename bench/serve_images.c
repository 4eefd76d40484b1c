/* See serve_images.h. */
#include "serve_images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/image.h"
#include "common/png_encode.h"

int serve_images_make(const char *path, uint64_t first, int n, serve_image *out) {
    memset(out, 0, (size_t)n * sizeof *out);
    mm_image base = {0};
    if (mm_image_load(path, NULL, &base) != MM_OK) {
        fprintf(stderr, "serve: %s\n", mm_error_last());
        return -1;
    }
    size_t bytes = (size_t)base.width * (size_t)base.height * 3;
    uint8_t *rgb = malloc(bytes);
    int rc = rgb && bytes >= 8 ? 0 : -1;
    if (rc) fprintf(stderr, "serve: %s: image too small or out of memory\n", path);
    for (int i = 0; i < n && rc == 0; i++) {
        memcpy(rgb, base.rgb, bytes);
        uint64_t k = first + (uint64_t)i;
        for (int b = 0; b < 8; b++) rgb[b] = (uint8_t)(k >> (8 * b));
        if (mm_png_encode(rgb, base.width, base.height, &out[i].png, &out[i].len) != MM_OK) {
            fprintf(stderr, "serve: %s\n", mm_error_last());
            rc = -1;
        }
    }
    free(rgb);
    mm_image_free(&base);
    if (rc) serve_images_free(out, n);
    return rc;
}

void serve_images_free(serve_image *v, int n) {
    for (int i = 0; i < n; i++) {
        free(v[i].png);
        v[i].png = NULL, v[i].len = 0;
    }
}
