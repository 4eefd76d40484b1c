/* Reads a PEM file (certificate, key or CA bundle) whole, for the TLS settings of the
 * coordinator and of the gRPC clients: gRPC and GnuTLS take PEM text, not paths. */
#ifndef MM_PEM_FILE_H
#define MM_PEM_FILE_H

#include "common/status.h"

#define MM_PEM_MAX (1 << 20)

/* *out = the file's text, NUL-terminated (free it; wipe a key first). what names the
 * setting in the message: a missing file, no "-----BEGIN " line or more than MM_PEM_MAX
 * bytes is an error. */
mm_status mm_pem_file_read(const char *what, const char *path, char **out);

#endif
