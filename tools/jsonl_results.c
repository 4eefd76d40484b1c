/* See jsonl_results.h. The index holds offsets, not records, so a job of a million
 * lines costs a few dozen MB here; compaction re-reads each latest line by offset. */
#include "jsonl_results.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/durable_file.h"

char *jsonl_results_key(const char *id, int line) {
    size_t n = id ? strlen(id) + 3 : 16;
    char *k = malloc(n);
    if (!k) return NULL;
    if (id) snprintf(k, n, "i:%s", id);
    else snprintf(k, n, "l:%d", line);
    return k;
}

/* Key of a record, or NULL when it names no input line. */
static char *record_key(const json_t *rec) {
    const json_t *id = json_object_get(rec, "id"), *line = json_object_get(rec, "line");
    if (json_is_string(id)) return jsonl_results_key(json_string_value(id), 0);
    if (json_is_null(id) && json_is_integer(line)) return jsonl_results_key(NULL, (int)json_integer_value(line));
    return NULL;
}

static int record_ok(const json_t *rec) {
    const char *st = json_string_value(json_object_get(rec, "status"));
    return st && !strcmp(st, "ok");
}

static mm_status index_record(jsonl_results *r, const char *key, off_t offset, int ok) {
    json_t *entry = json_pack("[I,b]", (json_int_t)offset, ok);
    if (!entry || json_object_set_new(r->latest, key, entry)) return MM_ERROR(MM_ERR_NOMEM, "out of memory indexing %s", r->path);
    return MM_OK;
}

/* Reads every complete line into the index; a torn tail is cut off (and fsync'd). */
static mm_status load_file(jsonl_results *r) {
    FILE *f = fopen(r->path, "rb");
    if (!f) return MM_ERROR(MM_ERR_IO, "cannot read %s: %s", r->path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    off_t offset = 0;
    mm_status s = MM_OK;
    while (s == MM_OK && (len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] != '\n') {
            r->n_torn_bytes = (size_t)len;
            break;
        }
        json_t *rec = json_loadb(line, (size_t)len, 0, NULL);
        char *key = json_is_object(rec) ? record_key(rec) : NULL;
        if (key) s = index_record(r, key, offset, record_ok(rec));
        else r->n_unreadable++;
        free(key);
        json_decref(rec);
        offset += len;
        r->n_lines++;
    }
    if (s == MM_OK && ferror(f)) s = MM_ERROR(MM_ERR_IO, "cannot read %s: %s", r->path, strerror(errno));
    free(line);
    fclose(f);
    r->size = offset;
    if (s == MM_OK && r->n_torn_bytes) {
        if (ftruncate(r->fd, offset) || fsync(r->fd))
            s = MM_ERROR(MM_ERR_IO, "cannot truncate the torn last line of %s: %s", r->path, strerror(errno));
    }
    return s;
}

mm_status jsonl_results_open(jsonl_results *r, const char *dir, int resume) {
    memset(r, 0, sizeof *r);
    r->fd = r->lock_fd = -1;
    if (strlen(dir) >= sizeof r->dir) return MM_ERROR(MM_ERR_INVALID, "path too long: %s", dir);
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    snprintf(r->path, sizeof r->path, "%s/" JSONL_RESULTS_NAME, dir);
    if (mkdir(dir, 0755) && errno != EEXIST) return MM_ERROR(MM_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    char lock_path[sizeof r->dir + 8];
    snprintf(lock_path, sizeof lock_path, "%s/.lock", dir);
    r->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0) return MM_ERROR(MM_ERR_IO, "cannot create %s: %s", lock_path, strerror(errno));
    mm_status s = MM_OK;
    if (flock(r->lock_fd, LOCK_EX | LOCK_NB)) {
        s = errno == EWOULDBLOCK ? MM_ERROR(MM_ERR_INVALID, "another job is writing to %s", dir)
                                 : MM_ERROR(MM_ERR_IO, "cannot lock %s: %s", lock_path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (!stat(r->path, &st) && st.st_size > 0 && !resume) {
        s = MM_ERROR(MM_ERR_INVALID, "%s already holds results: use --resume to continue that job (or another --out)",
                     r->path);
        goto fail;
    }
    r->fd = open(r->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (r->fd < 0) {
        s = MM_ERROR(MM_ERR_IO, "cannot open %s: %s", r->path, strerror(errno));
        goto fail;
    }
    if (!(r->latest = json_object())) {
        s = MM_ERROR(MM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    CHECK_GOTO(load_file(r), s, fail);
    CHECK_GOTO(durable_fsync_dir(dir), s, fail);
    if (pthread_mutex_init(&r->mu, NULL)) {
        s = MM_ERROR(MM_ERR_INTERNAL, "pthread_mutex_init failed");
        goto fail;
    }
    return MM_OK;
fail:
    json_decref(r->latest);
    r->latest = NULL;
    if (r->fd >= 0) close(r->fd);
    close(r->lock_fd);
    r->fd = r->lock_fd = -1;
    return s;
}

int jsonl_results_latest(jsonl_results *r, const char *key) {
    const json_t *e = json_object_get(r->latest, key);
    return e ? json_is_true(json_array_get(e, 1)) : -1;
}

mm_status jsonl_results_append(jsonl_results *r, const json_t *record) {
    char *key = record_key(record);
    char *text = json_dumps(record, JSON_COMPACT | JSON_REAL_PRECISION(12));
    size_t n = text ? strlen(text) : 0;
    char *line = text ? realloc(text, n + 2) : NULL;
    if (!key || !line) {
        free(key), free(line ? line : text);
        return key ? MM_ERROR(MM_ERR_NOMEM, "out of memory") : MM_ERROR(MM_ERR_INVALID, "a result record without id/line");
    }
    line[n++] = '\n', line[n] = 0;
    mm_status s = MM_OK;
    pthread_mutex_lock(&r->mu);
    ssize_t w;
    do w = write(r->fd, line, n);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)n) {
        /* a short write (disk full): take the torn tail back so later lines stay whole */
        s = MM_ERROR(MM_ERR_IO, "cannot append to %s: %s", r->path, w < 0 ? strerror(errno) : "short write");
        if (ftruncate(r->fd, r->size)) s = MM_ERROR(MM_ERR_IO, "cannot append to %s nor undo it: %s", r->path, strerror(errno));
    } else if (fsync(r->fd)) {
        s = MM_ERROR(MM_ERR_IO, "cannot fsync %s: %s", r->path, strerror(errno));
    } else {
        s = index_record(r, key, r->size, record_ok(record));
        r->size += (off_t)n;
        r->n_lines++;
    }
    pthread_mutex_unlock(&r->mu);
    free(key), free(line);
    return s;
}

/* Copies the line at offset of in to out. */
static mm_status copy_line(FILE *in, off_t offset, durable_file *out, char **buf, size_t *cap, const char *path) {
    ssize_t len;
    if (fseeko(in, offset, SEEK_SET) || (len = getline(buf, cap, in)) <= 0 || (*buf)[len - 1] != '\n')
        return MM_ERROR(MM_ERR_IO, "cannot re-read the line at byte %lld of %s", (long long)offset, path);
    return durable_file_write(out, *buf, (size_t)len);
}

mm_status jsonl_results_compact(jsonl_results *r, char *const *keys, size_t n_keys) {
    FILE *in = fopen(r->path, "rb");
    if (!in) return MM_ERROR(MM_ERR_IO, "cannot read %s: %s", r->path, strerror(errno));
    json_t *written = json_object();
    durable_file out;
    out.fd = -1;
    char *buf = NULL;
    size_t cap = 0;
    mm_status s = CHECK_ALLOC(written);
    if (s == MM_OK) s = durable_file_open(&out, r->dir, JSONL_RESULTS_NAME);
    for (size_t i = 0; i < n_keys && s == MM_OK; i++) {
        const json_t *e = json_object_get(r->latest, keys[i]);
        if (!e || json_object_get(written, keys[i])) continue;
        s = copy_line(in, (off_t)json_integer_value(json_array_get(e, 0)), &out, &buf, &cap, r->path);
        if (s == MM_OK && json_object_set_new(written, keys[i], json_true())) s = MM_ERROR(MM_ERR_NOMEM, "out of memory");
    }
    const char *key;
    json_t *e;
    json_object_foreach(r->latest, key, e) {
        if (s != MM_OK) break;
        if (!json_object_get(written, key))
            s = copy_line(in, (off_t)json_integer_value(json_array_get(e, 0)), &out, &buf, &cap, r->path);
    }
    if (s == MM_OK) s = durable_file_commit(&out);
    else durable_file_abort(&out);
    free(buf);
    fclose(in);
    json_decref(written);
    close(r->fd);
    r->fd = -1;
    return s;
}

void jsonl_results_close(jsonl_results *r) {
    if (r->lock_fd < 0) return;
    if (r->fd >= 0) close(r->fd);
    close(r->lock_fd);
    json_decref(r->latest);
    pthread_mutex_destroy(&r->mu);
    memset(r, 0, sizeof *r);
    r->fd = r->lock_fd = -1;
}
