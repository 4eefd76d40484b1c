/* See testutil.h. */
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <string.h>

int mm_test_passed, mm_test_failed;

int mm_test_has(const char *s, const char *needle) { return !needle || strstr(s, needle) != NULL; }

int mm_test_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, mm_test_passed, mm_test_failed);
    return mm_test_failed ? 1 : 0;
}

static const char *env_path(const char *var, const char *fallback, const char *rel) {
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ % 8];
    const char *dir = getenv(var);
    snprintf(b, sizeof bufs[0], "%s/%s", dir ? dir : fallback, rel);
    return b;
}

const char *mm_golden_path(const char *rel) { return env_path("MM_GOLDEN_DIR", "tests/golden", rel); }
const char *mm_asset_path(const char *rel) { return env_path("MM_ASSETS_DIR", "assets", rel); }

float mm_max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m;
}

void mm_test_transpose_bc(const float *x, float *y, int64_t B, int64_t C, int64_t hw, int to_nhwc) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < hw; p++) {
                if (to_nhwc) y[(b * hw + p) * C + c] = x[(b * C + c) * hw + p];
                else y[(b * C + c) * hw + p] = x[(b * hw + p) * C + c];
            }
}

double mm_nmse(const float *a, const float *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(ref[i])) return INFINITY;
        num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

char *mm_test_run_capture(char *const argv[]) {
    int fd[2];
    if (pipe(fd)) return NULL;
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]), close(fd[1]);
        return NULL;
    }
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]), close(fd[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    ssize_t r = 1;
    while (buf && r > 0) {
        if (n + 1 == cap) { /* grow, so a chatty child never blocks on a full pipe */
            char *g = realloc(buf, cap * 2);
            if (!g) free(buf);
            buf = g, cap *= 2;
            if (!buf) break;
        }
        r = read(fd[0], buf + n, cap - n - 1);
        if (r > 0) n += (size_t)r;
    }
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!buf) return NULL;
    buf[n] = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "%s exited with status %d\n", argv[0], status);
        free(buf);
        return NULL;
    }
    return buf;
}

int mm_test_ids_equal(const json_t *want, const int32_t *got, size_t n) {
    if (json_array_size(want) != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(want, i)) != got[i]) return 0;
    return 1;
}

char *mm_test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    char *d = n >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc((size_t)n + 1) : NULL;
    if (d && fread(d, 1, (size_t)n, f) != (size_t)n) {
        free(d);
        d = NULL;
    }
    fclose(f);
    if (!d) return NULL;
    d[n] = 0;
    if (len) *len = (size_t)n;
    return d;
}

int mm_test_model_root(const char *vision_dir, int select_layer, char *out, size_t cap) {
    char llm[4096], path[4600], target[4600];
    snprintf(out, cap, "/tmp/mm_root_XXXXXX");
    if (!mkdtemp(out)) return -1;
    snprintf(llm, sizeof llm, "%s", mm_asset_path("tiny/llm"));
    snprintf(path, sizeof path, "%s/llm", out);
    DIR *d = opendir(llm);
    if (!d || mkdir(path, 0755) != 0) {
        if (d) closedir(d);
        return -1;
    }
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(target, sizeof target, "%s/%s", llm, e->d_name);
        snprintf(path, sizeof path, "%s/llm/%s", out, e->d_name);
        if (strcmp(e->d_name, "config.json")) {
            rc = symlink(target, path);
            continue;
        }
        char *text = mm_test_read_file(target, NULL);
        const char *key = "\"mm_vision_select_layer\": -1";
        char *at = text ? strstr(text, key) : NULL;
        FILE *f = at ? fopen(path, "w") : NULL;
        if (!f) rc = -1;
        else {
            fprintf(f, "%.*s\"mm_vision_select_layer\": %d%s", (int)(at - text), text, select_layer, at + strlen(key));
            rc = fclose(f) ? -1 : 0;
        }
        free(text);
    }
    closedir(d);
    snprintf(path, sizeof path, "%s/vision", out);
    if (rc == 0) rc = symlink(vision_dir, path);
    snprintf(path, sizeof path, "%s/metamorph.json", out);
    FILE *f = rc == 0 ? fopen(path, "w") : NULL;
    if (!f) return -1;
    fputs("{\"format\": \"metamorph\", \"version\": 1, \"llm\": \"llm\", \"vision\": \"vision\", \"decoder\": null}\n", f);
    return fclose(f) ? -1 : 0;
}
