/* Levelled logging to stderr. The level comes from MM_LOG_LEVEL (error|warn|info|debug)
 * or mm_log_set_level; libraries log sparingly and never at info in hot loops. */
#ifndef MM_LOG_H
#define MM_LOG_H

typedef enum { MM_LOG_ERROR = 0, MM_LOG_WARN, MM_LOG_INFO, MM_LOG_DEBUG } mm_log_level;

void mm_log_set_level(mm_log_level level);
int mm_log_enabled(mm_log_level level);
void mm_log_write(mm_log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define LOG_ERROR(...) mm_log_write(MM_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_WARN(...) mm_log_write(MM_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_INFO(...) mm_log_write(MM_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_DEBUG(...) mm_log_write(MM_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

#endif
