/* PNG encoding of 8-bit RGB images through libpng, to memory (for replies that carry
 * the image) or to a file. Decoding lives in image.h. */
#ifndef MM_PNG_ENCODE_H
#define MM_PNG_ENCODE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* rgb[height, width, 3] -> *out (malloc'd, free()) of *n bytes. */
mm_status mm_png_encode(const uint8_t *rgb, int32_t width, int32_t height, uint8_t **out, size_t *n);
/* Same, written to path (messages name it). */
mm_status mm_png_write_file(const char *path, const uint8_t *rgb, int32_t width, int32_t height);

#endif
