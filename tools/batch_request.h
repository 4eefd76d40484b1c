/* One batch line as a GenerateRequest (metamorph.proto): a user message with the
 * line's images (PNG/JPEG bytes, read from disk now, before its text), its sampling
 * and image parameters, and generate_image for the generate task. The bytes of an
 * image are not checked here: the service judges them (INVALID_ARGUMENT). */
#ifndef MM_BATCH_REQUEST_H
#define MM_BATCH_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "tools/batch_input.h"

/* *buf: malloc'd packed request of *len bytes. MM_ERR_IO names an image file that
 * cannot be read. it must have no error. */
mm_status batch_request_pack(const batch_item *it, uint8_t **buf, size_t *len);

#endif
