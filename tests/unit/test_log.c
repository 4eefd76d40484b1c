/* common/log.c: one line per message in the one format every program uses (text:
 * "DATE T TIME Z LEVEL prog[pid] file:line msg"; json: one object per line with its
 * fields, quotes and control bytes escaped), levels filtered, config values checked. */
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "tests/testutil.h"

/* Runs fn with stderr sent to a file; returns what it wrote (malloc'd). */
static char *capture(void (*fn)(void)) {
    char path[] = "/tmp/mm-test-log-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    size_t n;
    char *text = mm_test_read_file(path, &n);
    unlink(path);
    return text;
}

static void write_text(void) {
    mm_log_set_format(MM_LOG_TEXT);
    mm_log_set_level(MM_LOG_INFO);
    LOG_INFO("hello %d", 42);
    LOG_DEBUG("not shown");
    LOG_ERROR("bad \"thing\"");
}

static void write_json(void) {
    mm_log_set_format(MM_LOG_JSON);
    mm_log_set_level(MM_LOG_WARN);
    LOG_INFO("not shown");
    LOG_WARN("quote \" newline \n tab \t end");
}

int main(void) {
    unsetenv("MM_LOG_LEVEL"), unsetenv("MM_LOG_FORMAT"); /* the environment would win over the calls below */
    char *t = capture(write_text);
    EXPECT(t != NULL, "capture");
    if (t) {
        regex_t re;
        regcomp(&re,
                "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z INFO  test_log\\[[0-9]+\\] test_log\\.c:[0-9]+ "
                "hello 42\n[0-9T:.Z-]+ ERROR test_log\\[[0-9]+\\] test_log\\.c:[0-9]+ bad \"thing\"\n$",
                REG_EXTENDED);
        EXPECT(regexec(&re, t, 0, NULL, 0) == 0, "text lines:\n%s", t);
        regfree(&re);
        free(t);
    }
    char *j = capture(write_json);
    EXPECT(j && strchr(j, '\n') == j + strlen(j) - 1, "one JSON line: %s", j ? j : "(null)");
    json_t *o = j ? json_loads(j, 0, NULL) : NULL;
    EXPECT(o != NULL, "the line parses as JSON: %s", j ? j : "(null)");
    if (o) {
        EXPECT(!strcmp(json_string_value(json_object_get(o, "level")), "warn"), "level");
        EXPECT(!strcmp(json_string_value(json_object_get(o, "prog")), "test_log"), "prog");
        EXPECT(json_integer_value(json_object_get(o, "pid")) == getpid(), "pid");
        EXPECT(!strncmp(json_string_value(json_object_get(o, "src")), "test_log.c:", 11), "src");
        EXPECT(!strcmp(json_string_value(json_object_get(o, "msg")), "quote \" newline \n tab \t end"), "msg round trip");
        EXPECT(strlen(json_string_value(json_object_get(o, "time"))) == 24, "time");
        json_decref(o);
    }
    free(j);
    EXPECT(mm_log_configure("loud", "") == MM_ERR_INVALID, "unknown level refused");
    EXPECT(mm_log_configure("", "xml") == MM_ERR_INVALID, "unknown format refused");
    EXPECT(mm_log_configure("debug", "text") == MM_OK && mm_log_enabled(MM_LOG_DEBUG), "config applies");
    return mm_test_finish("test_log");
}
