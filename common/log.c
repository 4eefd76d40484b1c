/* stderr logger; see log.h. One fprintf per line so concurrent lines do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int current_level = -1;

static int level_from_env(void) {
    const char *s = getenv("MM_LOG_LEVEL");
    if (!s) return MM_LOG_WARN;
    if (!strcmp(s, "error")) return MM_LOG_ERROR;
    if (!strcmp(s, "warn")) return MM_LOG_WARN;
    if (!strcmp(s, "info")) return MM_LOG_INFO;
    if (!strcmp(s, "debug")) return MM_LOG_DEBUG;
    return MM_LOG_WARN;
}

void mm_log_set_level(mm_log_level level) { current_level = (int)level; }

int mm_log_enabled(mm_log_level level) {
    if (current_level < 0) current_level = level_from_env();
    return (int)level <= current_level;
}

void mm_log_write(mm_log_level level, const char *file, int line, const char *fmt, ...) {
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if (!mm_log_enabled(level)) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s %s:%d %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, names[level], base ? base + 1 : file, line, msg);
}
