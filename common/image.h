/* Image decoding (PNG via libpng, JPEG via libjpeg-turbo) to 8-bit RGB with the
 * semantics of PIL's Image.open(f).convert('RGB'), which is how MetaMorph loads images:
 * alpha is dropped (not composited), palettes are looked up (tRNS ignored), 1/2/4-bit
 * grey is scaled to 0..255, 16-bit samples keep their high byte, except 16-bit grey,
 * which PIL opens as "I;16" and clips to 255. Also PIL's resampling of 8-bit images
 * (image_resize.c), used by the SigLIP preprocessor.
 *
 * Input is untrusted (request bytes): sizes are checked against limits before any
 * pixel buffer is allocated, and anything corrupt, truncated or over a limit is an
 * MM_ERR_FORMAT / MM_ERR_INVALID / MM_ERR_UNSUPPORTED status with a message, never a
 * crash or an abort. libjpeg warnings (corrupt data it would paper over) are errors. */
#ifndef MM_IMAGE_H
#define MM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Defaults: 20 MiB of encoded bytes, 4096 x 4096 pixels. */
#define MM_IMAGE_DEFAULT_MAX_BYTES ((size_t)20 << 20)
#define MM_IMAGE_DEFAULT_MAX_SIDE 4096

typedef struct {
    size_t max_bytes;  /* encoded size */
    int32_t max_width, max_height;
} mm_image_limits;

/* The defaults above. */
mm_image_limits mm_image_limits_default(void);

typedef struct {
    int32_t width, height;
    uint8_t *rgb; /* [height, width, 3], malloc'd */
} mm_image;

/* Decodes PNG or JPEG bytes (told apart by their signature). lim NULL: defaults. */
mm_status mm_image_decode(const void *data, size_t n, const mm_image_limits *lim, mm_image *out);
/* Reads a file (at most lim->max_bytes) and decodes it; messages name the file. */
mm_status mm_image_load(const char *path, const mm_image_limits *lim, mm_image *out);
void mm_image_free(mm_image *img);

/* PIL's Image.resize for 8-bit RGB with its separable filters (Resample.c: support
 * scaled by the downscale factor, coefficients normalised then rounded to 22-bit fixed
 * point, horizontal pass then vertical pass, each rounded and clipped to 8 bits).
 * resample: PIL's numbering, 2 = bilinear, 3 = bicubic (a = -0.5). */
mm_status mm_image_resize(const mm_image *in, int32_t width, int32_t height, int resample, mm_image *out);

#endif
