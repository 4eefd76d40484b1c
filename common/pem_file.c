/* See pem_file.h. */
#include "pem_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mm_status mm_pem_file_read(const char *what, const char *path, char **out) {
    FILE *f = fopen(path, "rb");
    if (!f) return MM_ERROR(MM_ERR_IO, "%s %s: cannot open", what, path);
    char *buf = malloc(MM_PEM_MAX + 1);
    size_t n = buf ? fread(buf, 1, MM_PEM_MAX + 1, f) : 0;
    int err = ferror(f);
    fclose(f);
    if (!buf) return MM_ERROR(MM_ERR_NOMEM, "%s", what);
    if (n <= MM_PEM_MAX) buf[n] = 0;
    if (err || n == 0 || n > MM_PEM_MAX || !strstr(buf, "-----BEGIN ")) {
        free(buf);
        return MM_ERROR(MM_ERR_FORMAT, "%s %s: not a PEM file (or larger than %d bytes)", what, path, MM_PEM_MAX);
    }
    *out = buf;
    return MM_OK;
}
