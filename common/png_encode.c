/* See png_encode.h. libpng reports errors by longjmp: every libpng call is inside the
 * setjmp scope and nothing allocated there outlives it unfreed. */
#include "png_encode.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t *data;
    size_t n, cap;
    int oom;
} png_buf;

static void buf_write(png_structp png, png_bytep bytes, png_size_t len) {
    png_buf *b = png_get_io_ptr(png);
    if (b->oom) return;
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->n + len) cap *= 2;
        uint8_t *p = realloc(b->data, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->data = p, b->cap = cap;
    }
    memcpy(b->data + b->n, bytes, len);
    b->n += len;
}

static void buf_flush(png_structp png) { (void)png; }

mm_status mm_png_encode(const uint8_t *rgb, int32_t width, int32_t height, uint8_t **out, size_t *n) {
    if (width <= 0 || height <= 0 || width > 65535 || height > 65535)
        return MM_ERROR(MM_ERR_INVALID, "PNG encode: size %dx%d", width, height);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        return MM_ERROR(MM_ERR_NOMEM, "PNG encoder");
    }
    png_buf b = {0};
    png_bytep *rows = malloc((size_t)height * sizeof *rows);
    if (!rows) {
        png_destroy_write_struct(&png, &info);
        return MM_ERROR(MM_ERR_NOMEM, "PNG rows");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(rows), free(b.data);
        return MM_ERROR(MM_ERR_INTERNAL, "libpng failed while encoding a %dx%d image", width, height);
    }
    png_set_write_fn(png, &b, buf_write, buf_flush);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int32_t y = 0; y < height; y++) rows[y] = (png_bytep)(rgb + (size_t)y * (size_t)width * 3);
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    if (b.oom) {
        free(b.data);
        return MM_ERROR(MM_ERR_NOMEM, "PNG output buffer");
    }
    *out = b.data, *n = b.n;
    return MM_OK;
}

mm_status mm_png_write_file(const char *path, const uint8_t *rgb, int32_t width, int32_t height) {
    uint8_t *data;
    size_t n;
    CHECK(mm_png_encode(rgb, width, height, &data, &n));
    FILE *f = fopen(path, "wb");
    mm_status s = MM_OK;
    if (!f) {
        s = MM_ERROR(MM_ERR_IO, "%s: cannot open for writing", path);
    } else {
        if (fwrite(data, 1, n, f) != n) s = MM_ERROR(MM_ERR_IO, "%s: write failed", path);
        if (fclose(f) != 0 && s == MM_OK) s = MM_ERROR(MM_ERR_IO, "%s: close failed", path);
    }
    free(data);
    return s;
}
