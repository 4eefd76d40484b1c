/* Status codes and error-propagation macros shared by every library.
 * Library code never prints-and-dies: it records a message (with file and line)
 * in a thread-local buffer and returns a status; the caller decides what to do. */
#ifndef MM_STATUS_H
#define MM_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MM_OK = 0,
    MM_ERR_INVALID,     /* bad argument or input */
    MM_ERR_IO,          /* open/read/write/mmap failed */
    MM_ERR_FORMAT,      /* malformed file (JSON, safetensors, image, ...) */
    MM_ERR_NOMEM,       /* allocation failed */
    MM_ERR_UNSUPPORTED, /* valid but not implemented (dtype, op, option) */
    MM_ERR_NOT_FOUND,   /* missing tensor, key or file */
    MM_ERR_INTERNAL,    /* a bug */
    MM_ERR_CANCELLED,   /* stopped on request (a pool job its coordinator cancelled) */
    MM_ERR_BUSY         /* not taken, no verdict: full right now, try again or elsewhere */
} mm_status;

/* The last code: statuses that travel (a pool RESULT's error_status) are checked against it. */
#define MM_STATUS_LAST MM_ERR_BUSY

const char *mm_status_str(mm_status s);

/* Records "file:line: message" as the last error of this thread and returns code. */
mm_status mm_error_set(mm_status code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The last error message of this thread ("" if none). */
const char *mm_error_last(void);
void mm_error_clear(void);
/* msg without the leading "file.c:123: " that mm_error_set puts there (a pointer into
 * msg): "image.c:216: not a PNG" -> "not a PNG". A client needs the why, not our
 * source lines (the log keeps them). */
const char *mm_error_without_location(const char *msg);

#ifdef __cplusplus
}
#endif

#define MM_ERROR(code, ...) mm_error_set((code), __FILE__, __LINE__, __VA_ARGS__)

/* Propagate a non-OK status. */
#define CHECK(x)                                                                                   \
    do {                                                                                           \
        mm_status check_s_ = (x);                                                                  \
        if (check_s_ != MM_OK) return check_s_;                                                    \
    } while (0)

/* Store the status in rc and jump to a cleanup label on failure. */
#define CHECK_GOTO(x, rc, label)                                                                   \
    do {                                                                                           \
        (rc) = (x);                                                                                \
        if ((rc) != MM_OK) goto label;                                                             \
    } while (0)

/* Allocation helper: evaluates to MM_ERR_NOMEM (with a message) when p is NULL. */
#define CHECK_ALLOC(p) ((p) ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "out of memory allocating %s", #p))

#endif
