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
    char text[sizeof last_error];
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    /* Messages quote names and values read from files and requests: control bytes are
     * written as \xNN so that one error stays one printable line (a log, a terminal, a
     * gRPC status) whatever the file held. */
    size_t o = (size_t)n;
    for (const unsigned char *p = (const unsigned char *)text; *p && o + 5 < sizeof last_error; p++) {
        if (*p < 0x20 || *p == 0x7f) o += (size_t)snprintf(last_error + o, sizeof last_error - o, "\\x%02x", *p);
        else last_error[o++] = (char)*p;
    }
    last_error[o] = '\0';
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
