/* stderr logger; see log.h. One fprintf per line so concurrent lines do not interleave.
 * The JSON form is built with jansson, so a message's quotes and control bytes are
 * escaped properly. */
#include "log.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int current_level = -1, current_format = -1;

static const char *const LEVEL_NAMES[] = {"error", "warn", "info", "debug"};

int mm_log_parse_level(const char *name, mm_log_level *out) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, LEVEL_NAMES[i])) return *out = (mm_log_level)i, 0;
    return -1;
}

int mm_log_parse_format(const char *name, mm_log_format *out) {
    if (!strcmp(name, "text")) return *out = MM_LOG_TEXT, 0;
    if (!strcmp(name, "json")) return *out = MM_LOG_JSON, 0;
    return -1;
}

static void from_env(void) {
    mm_log_level l = MM_LOG_INFO;
    mm_log_format f = MM_LOG_TEXT;
    const char *s = getenv("MM_LOG_LEVEL");
    if (current_level < 0) current_level = s && mm_log_parse_level(s, &l) == 0 ? (int)l : (int)MM_LOG_INFO;
    s = getenv("MM_LOG_FORMAT");
    if (current_format < 0) current_format = s && mm_log_parse_format(s, &f) == 0 ? (int)f : (int)MM_LOG_TEXT;
}

void mm_log_set_level(mm_log_level level) { current_level = (int)level; }
void mm_log_set_format(mm_log_format format) { current_format = (int)format; }

mm_status mm_log_configure(const char *level, const char *format) {
    mm_log_level l = MM_LOG_INFO;
    mm_log_format f = MM_LOG_TEXT;
    if (level[0] && mm_log_parse_level(level, &l) != 0)
        return MM_ERROR(MM_ERR_INVALID, "log_level \"%.32s\": want error, warn, info or debug", level);
    if (format[0] && mm_log_parse_format(format, &f) != 0)
        return MM_ERROR(MM_ERR_INVALID, "log_format \"%.32s\": want text or json", format);
    if (level[0] && !getenv("MM_LOG_LEVEL")) current_level = (int)l;
    if (format[0] && !getenv("MM_LOG_FORMAT")) current_format = (int)f;
    return MM_OK;
}

int mm_log_enabled(mm_log_level level) {
    if (current_level < 0 || current_format < 0) from_env();
    return (int)level <= current_level;
}

void mm_log_write(mm_log_level level, const char *file, int line, const char *fmt, ...) {
    static const char *const TEXT_NAMES[] = {"ERROR", "WARN", "INFO", "DEBUG"};
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
    char when[64];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(ts.tv_nsec / 1000000) % 1000);
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    const char *prog = program_invocation_short_name;
    if (current_format == MM_LOG_JSON) {
        char src[160];
        snprintf(src, sizeof src, "%s:%d", base, line);
        json_t *j = json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "time", when, "level", LEVEL_NAMES[level], "prog", prog,
                              "pid", (int)getpid(), "src", src, "msg", msg);
        char *text = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII) : NULL;
        json_decref(j);
        if (text) {
            fprintf(stderr, "%s\n", text);
            free(text);
            return;
        } /* out of memory: the text form below */
    }
    fprintf(stderr, "%s %-5s %s[%d] %s:%d %s\n", when, TEXT_NAMES[level], prog, (int)getpid(), base, line, msg);
}
