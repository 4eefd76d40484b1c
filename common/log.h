/* Levelled logging to stderr, one line per message, in one format for every program of
 * the service: "2026-12-03T13:53:56.123Z INFO  mm-coordinator[1234] engine.c:792 text"
 * or, with the json format, {"time", "level", "prog", "pid", "src", "msg"} per line.
 * Level and format come from MM_LOG_LEVEL (error|warn|info|debug, default info) and
 * MM_LOG_FORMAT (text|json), or from the service config (mm_log_configure; the
 * environment wins). Libraries log sparingly and never at info in hot loops. */
#ifndef MM_LOG_H
#define MM_LOG_H

#include "status.h"

typedef enum { MM_LOG_ERROR = 0, MM_LOG_WARN, MM_LOG_INFO, MM_LOG_DEBUG } mm_log_level;
typedef enum { MM_LOG_TEXT = 0, MM_LOG_JSON } mm_log_format;

void mm_log_set_level(mm_log_level level);
void mm_log_set_format(mm_log_format format);
/* Names -> values ("info", "json"); 0 on success, -1 for an unknown name. */
int mm_log_parse_level(const char *name, mm_log_level *out);
int mm_log_parse_format(const char *name, mm_log_format *out);
/* A config's log_level / log_format ("" = leave as is), unless MM_LOG_LEVEL /
 * MM_LOG_FORMAT are set; MM_ERR_INVALID names the bad value. */
mm_status mm_log_configure(const char *level, const char *format);
int mm_log_enabled(mm_log_level level);
void mm_log_write(mm_log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define LOG_ERROR(...) mm_log_write(MM_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_WARN(...) mm_log_write(MM_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_INFO(...) mm_log_write(MM_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_DEBUG(...) mm_log_write(MM_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

#endif
