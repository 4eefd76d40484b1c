/* PNG and JPEG decoding to RGB with PIL convert('RGB') semantics (see image.h).
 * Both libraries report errors by longjmp out of a callback; every resource that may
 * be live at that point is reachable from a struct that the cleanup path frees, and
 * nothing is allocated for pixels before the header has passed the size limits. */
#include "image.h"

#include <errno.h>
#include <setjmp.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

mm_image_limits mm_image_limits_default(void) {
    return (mm_image_limits){MM_IMAGE_DEFAULT_MAX_BYTES, MM_IMAGE_DEFAULT_MAX_SIDE, MM_IMAGE_DEFAULT_MAX_SIDE};
}

void mm_image_free(mm_image *img) {
    if (!img) return;
    free(img->rgb);
    memset(img, 0, sizeof *img);
}

static mm_status check_size(const char *kind, uint32_t w, uint32_t h, const mm_image_limits *lim) {
    if (w == 0 || h == 0) return MM_ERROR(MM_ERR_FORMAT, "%s: image has zero width or height (%ux%u)", kind, w, h);
    if (w > (uint32_t)lim->max_width || h > (uint32_t)lim->max_height)
        return MM_ERROR(MM_ERR_INVALID, "%s: image is %ux%u, over the %dx%d limit", kind, w, h, lim->max_width,
                        lim->max_height);
    return MM_OK;
}

/* ---------------------------------------------------------------- PNG */

typedef struct {
    const uint8_t *data;
    size_t n, pos;
    char msg[200];
} png_src;

static void png_read_mem(png_structp png, png_bytep out, png_size_t len) {
    png_src *s = png_get_io_ptr(png);
    if (len > s->n - s->pos) png_error(png, "truncated file (read past the end)");
    memcpy(out, s->data + s->pos, len);
    s->pos += len;
}

static void png_on_error(png_structp png, png_const_charp msg) {
    png_src *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

typedef struct {
    png_structp png;
    png_infop info;
    uint8_t *raw;  /* [h, rowbytes] decoded rows */
    png_bytep *rows;
} png_job;

static mm_status decode_png(const uint8_t *data, size_t n, const mm_image_limits *lim, mm_image *out) {
    png_src src = {data, n, 0, ""};
    png_job j = {0};
    volatile mm_status rc = MM_OK;
    uint8_t *volatile rgb = NULL;
    j.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
    if (j.png) j.info = png_create_info_struct(j.png);
    if (!j.png || !j.info) {
        png_destroy_read_struct(&j.png, &j.info, NULL);
        return MM_ERROR(MM_ERR_NOMEM, "PNG: cannot create the decoder");
    }
    if (setjmp(png_jmpbuf(j.png))) {
        rc = MM_ERROR(MM_ERR_FORMAT, "PNG: %s", src.msg[0] ? src.msg : "corrupt data");
        goto done;
    }
    png_set_read_fn(j.png, &src, png_read_mem);
    png_set_chunk_malloc_max(j.png, 64u << 20); /* ancillary chunks (iCCP, zTXt) */
    png_read_info(j.png, j.info);
    png_uint_32 w = png_get_image_width(j.png, j.info), h = png_get_image_height(j.png, j.info);
    rc = check_size("PNG", w, h, lim);
    if (rc != MM_OK) goto done;
    int ct = png_get_color_type(j.png, j.info), depth = png_get_bit_depth(j.png, j.info);
    /* 16-bit grey: PIL's "I;16", convert('RGB') clips each value to 255 */
    int grey16 = depth == 16 && ct == PNG_COLOR_TYPE_GRAY;
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(j.png); /* tRNS stays unused */
    if (ct == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(j.png);
    if (depth == 16 && !grey16) png_set_strip_16(j.png); /* high byte, as PIL's ";16B" unpackers */
    if (ct & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(j.png);
    if (grey16) png_set_swap(j.png); /* host-order 16-bit samples */
    png_set_interlace_handling(j.png);
    png_read_update_info(j.png, j.info);
    size_t rowbytes = png_get_rowbytes(j.png, j.info);
    int channels = png_get_channels(j.png, j.info);
    size_t want = (size_t)w * (size_t)channels * (grey16 ? 2 : 1);
    /* a palette's tRNS comes back as alpha from the expansion: dropped below */
    if (!grey16) want = (size_t)w * (size_t)channels;
    if (rowbytes != want || channels < 1 || channels > 4) {
        rc = MM_ERROR(MM_ERR_INTERNAL, "PNG: unexpected row layout (%zu bytes, %d channels)", rowbytes, channels);
        goto done;
    }
    j.raw = malloc(rowbytes * h);
    j.rows = malloc(sizeof *j.rows * h);
    rgb = malloc((size_t)w * h * 3);
    if (!j.raw || !j.rows || !rgb) {
        rc = MM_ERROR(MM_ERR_NOMEM, "PNG: %ux%u pixels", w, h);
        goto done;
    }
    for (png_uint_32 y = 0; y < h; y++) j.rows[y] = j.raw + rowbytes * y;
    png_read_image(j.png, j.rows);
    png_read_end(j.png, NULL); /* checks the trailing chunks' CRCs too */
    for (size_t p = 0; p < (size_t)w * h; p++) {
        uint8_t *o = rgb + 3 * p;
        if (grey16) {
            uint16_t v = ((const uint16_t *)j.raw)[p];
            o[0] = o[1] = o[2] = v > 255 ? 255 : (uint8_t)v;
        } else if (channels <= 2) { /* grey (+ alpha, dropped) */
            o[0] = o[1] = o[2] = j.raw[p * channels];
        } else { /* RGB (+ alpha, dropped) */
            memcpy(o, j.raw + (size_t)channels * p, 3);
        }
    }
    out->width = (int32_t)w, out->height = (int32_t)h, out->rgb = rgb;
    rgb = NULL;
done:
    png_destroy_read_struct(&j.png, &j.info, NULL);
    free(j.raw);
    free(j.rows);
    free(rgb);
    return rc;
}

/* ---------------------------------------------------------------- JPEG */

typedef struct {
    struct jpeg_error_mgr mgr;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jmp, 1);
}

/* Warnings (level -1) mean corrupt data that libjpeg would decode anyway (premature end,
 * bad Huffman codes, extraneous bytes): refused, so garbage never becomes pixels. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level < 0) jpeg_on_error(cinfo);
}

static mm_status decode_jpeg(const uint8_t *data, size_t n, const mm_image_limits *lim, mm_image *out) {
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    volatile mm_status rc = MM_OK;
    uint8_t *volatile rgb = NULL;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_on_error;
    err.mgr.emit_message = jpeg_on_message;
    err.msg[0] = 0;
    if (setjmp(err.jmp)) {
        rc = MM_ERROR(MM_ERR_FORMAT, "JPEG: %s", err.msg[0] ? err.msg : "corrupt data");
        goto done;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)n);
    jpeg_read_header(&cinfo, TRUE);
    rc = check_size("JPEG", cinfo.image_width, cinfo.image_height, lim);
    if (rc != MM_OK) goto done;
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        rc = MM_ERROR(MM_ERR_UNSUPPORTED, "JPEG: CMYK/YCCK images are not supported");
        goto done;
    }
    cinfo.out_color_space = JCS_RGB; /* grey is replicated, YCbCr converted, as PIL does */
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3) {
        rc = MM_ERROR(MM_ERR_UNSUPPORTED, "JPEG: %d output components", cinfo.output_components);
        goto done;
    }
    size_t stride = (size_t)cinfo.output_width * 3;
    rgb = malloc(stride * cinfo.output_height);
    if (!rgb) {
        rc = MM_ERROR(MM_ERR_NOMEM, "JPEG: %ux%u pixels", cinfo.output_width, cinfo.output_height);
        goto done;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = rgb + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    out->width = (int32_t)cinfo.output_width, out->height = (int32_t)cinfo.output_height, out->rgb = rgb;
    rgb = NULL;
done:
    jpeg_destroy_decompress(&cinfo);
    free(rgb);
    return rc;
}

/* ---------------------------------------------------------------- entry points */

mm_status mm_image_decode(const void *data, size_t n, const mm_image_limits *lim, mm_image *out) {
    mm_image_limits def = mm_image_limits_default();
    if (!lim) lim = &def;
    if (!out || (!data && n)) return MM_ERROR(MM_ERR_INVALID, "mm_image_decode: NULL argument");
    memset(out, 0, sizeof *out);
    if (n > lim->max_bytes)
        return MM_ERROR(MM_ERR_INVALID, "image of %zu bytes is over the %zu-byte limit", n, lim->max_bytes);
    const uint8_t *p = data;
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (n >= 8 && !memcmp(p, png_sig, 8)) return decode_png(p, n, lim, out);
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) return decode_jpeg(p, n, lim, out);
    return MM_ERROR(MM_ERR_FORMAT, "not a PNG or JPEG image (%zu bytes)", n);
}

mm_status mm_image_load(const char *path, const mm_image_limits *lim, mm_image *out) {
    mm_image_limits def = mm_image_limits_default();
    if (!lim) lim = &def;
    if (!out || !path) return MM_ERROR(MM_ERR_INVALID, "mm_image_load: NULL argument");
    memset(out, 0, sizeof *out); /* callers may free it whatever happens */
    FILE *f = fopen(path, "rb");
    if (!f) return MM_ERROR(MM_ERR_IO, "%s: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    mm_status rc = MM_OK;
    for (;;) {
        if (n == cap) {
            if (cap > lim->max_bytes) {
                rc = MM_ERROR(MM_ERR_INVALID, "%s: over the %zu-byte image limit", path, lim->max_bytes);
                break;
            }
            size_t ncap = cap ? cap * 2 : 65536;
            uint8_t *g = realloc(buf, ncap);
            if (!g) {
                rc = MM_ERROR(MM_ERR_NOMEM, "%s: reading", path);
                break;
            }
            buf = g, cap = ncap;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) rc = MM_ERROR(MM_ERR_IO, "%s: read error: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (rc == MM_OK) {
        rc = mm_image_decode(buf, n, lim, out);
        if (rc != MM_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mm_error_last());
            rc = MM_ERROR(rc, "%s: %s", path, msg);
        }
    }
    free(buf);
    return rc;
}
