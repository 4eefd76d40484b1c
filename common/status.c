/* Thread-local last-error buffer behind MM_ERROR; see status.h. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *mm_status_str(mm_status s) {
    switch (s) {
    case MM_OK: return "ok";
    case MM_ERR_INVALID: return "invalid argument";
    case MM_ERR_IO: return "I/O error";
    case MM_ERR_FORMAT: return "malformed input";
    case MM_ERR_NOMEM: return "out of memory";
    case MM_ERR_UNSUPPORTED: return "unsupported";
    case MM_ERR_NOT_FOUND: return "not found";
    case MM_ERR_INTERNAL: return "internal error";
    case MM_ERR_CANCELLED: return "cancelled";
    case MM_ERR_BUSY: return "busy";
    }
    return "unknown status";
}

mm_status mm_error_set(mm_status code, const char *file, int line, const char *fmt, ...) {
    const char *base = strrchr(file, '/');
    int n = snprintf(last_error, sizeof last_error, "%s:%d: ", base ? base + 1 : file, line);
    if (n < 0 || (size_t)n >= sizeof last_error) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

const char *mm_error_last(void) { return last_error; }

void mm_error_clear(void) { last_error[0] = '\0'; }

const char *mm_error_without_location(const char *msg) {
    size_t file = strcspn(msg, ": ");
    if (msg[file] != ':' || file == 0) return msg;
    const char *p = msg + file + 1;
    if (*p < '0' || *p > '9') return msg;
    while (*p >= '0' && *p <= '9') p++;
    return p[0] == ':' && p[1] == ' ' ? p + 2 : msg;
}
