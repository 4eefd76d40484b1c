/* See batch_shard.h and batch_input.h (batch_input_load_shard). */
#include "batch_shard.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/batch_input.h"

#define MAX_SHARDS 1000000
#define MAX_MEMBER_BYTES ((int64_t)1 << 30) /* as batch_request.c's largest image file */

void batch_shards_free(char **paths, size_t n) {
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

/* Appends every expansion of pattern (its first range, then the rest recursively). */
static mm_status expand(const char *pattern, char ***paths, size_t *n, size_t *cap) {
    const char *open = strchr(pattern, '{'), *dots = open ? strstr(open, "..") : NULL;
    const char *close = dots ? strchr(dots, '}') : NULL;
    char *end_a = NULL, *end_b = NULL;
    long a = open ? strtol(open + 1, &end_a, 10) : 0, b = dots ? strtol(dots + 2, &end_b, 10) : 0;
    int is_range = open && dots && close && end_a == dots && end_b == close && open[1] != '-' && a <= b;
    if (!is_range) {
        if (open && strchr(open, '}'))
            return MM_ERROR(MM_ERR_INVALID, "%s: a brace must be a range {A..B} of decimal numbers, A <= B", pattern);
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 64;
            char **np = realloc(*paths, *cap * sizeof *np);
            CHECK(CHECK_ALLOC(np));
            *paths = np;
        }
        CHECK(CHECK_ALLOC((*paths)[*n] = strdup(pattern)));
        (*n)++;
        return MM_OK;
    }
    if (b - a >= MAX_SHARDS) return MM_ERROR(MM_ERR_INVALID, "%s: more than %d shards", pattern, MAX_SHARDS);
    int width = (int)(dots - open - 1);
    size_t len = strlen(pattern) + 32;
    char *one = malloc(len);
    CHECK(CHECK_ALLOC(one));
    mm_status s = MM_OK;
    for (long i = a; i <= b && s == MM_OK; i++) {
        snprintf(one, len, "%.*s%0*ld%s", (int)(open - pattern), pattern, width, i, close + 1);
        s = *n >= MAX_SHARDS ? MM_ERROR(MM_ERR_INVALID, "more than %d shards", MAX_SHARDS) : expand(one, paths, n, cap);
    }
    free(one);
    return s;
}

mm_status batch_shards_expand(const char *pattern, char ***paths, size_t *n) {
    *paths = NULL, *n = 0;
    size_t cap = 0;
    mm_status s = expand(pattern, paths, n, &cap);
    if (s != MM_OK) batch_shards_free(*paths, *n), *paths = NULL, *n = 0;
    return s;
}

void batch_shard_results_dir(const char *shard, char *out, size_t cap) {
    static const char *const exts[] = {".tar.gz", ".tar.zst", ".tar.xz", ".tgz", ".tar"};
    size_t n = strlen(shard);
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        size_t e = strlen(exts[i]);
        if (n > e && !strcmp(shard + n - e, exts[i])) {
            n -= e;
            break;
        }
    }
    snprintf(out, cap, "%.*s.results", (int)n, shard);
}

/* The WebDataset key of a member: its path up to the first '.' of its file name. */
static char *sample_key(const char *member) {
    const char *base = strrchr(member, '/');
    base = base ? base + 1 : member;
    const char *dot = strchr(base, '.');
    size_t n = dot ? (size_t)(dot - member) : strlen(member);
    char *k = malloc(n + 1);
    if (k) memcpy(k, member, n), k[n] = 0;
    return k;
}

/* The member's bytes (regular members of at most MAX_MEMBER_BYTES). */
static mm_status read_member(struct archive *ar, struct archive_entry *e, const char *tar, uint8_t **data, size_t *len) {
    int64_t size = archive_entry_size(e);
    const char *name = archive_entry_pathname(e);
    if (size < 0 || size > MAX_MEMBER_BYTES)
        return MM_ERROR(MM_ERR_INVALID, "%s#%s: %lld bytes: too large", tar, name, (long long)size);
    *data = malloc(size ? (size_t)size : 1);
    CHECK(CHECK_ALLOC(*data));
    la_ssize_t got = size ? archive_read_data(ar, *data, (size_t)size) : 0;
    if (got != size) {
        free(*data);
        *data = NULL;
        return MM_ERROR(MM_ERR_IO, "%s#%s: %s", tar, name, got < 0 ? archive_error_string(ar) : "short read");
    }
    *len = (size_t)size;
    return MM_OK;
}

mm_status batch_input_load_shard(const char *tar, const char *prompt, const batch_input_options *o, batch_input *out) {
    memset(out, 0, sizeof *out);
    struct archive *ar = archive_read_new();
    CHECK(CHECK_ALLOC(ar));
    archive_read_support_filter_all(ar);
    archive_read_support_format_tar(ar);
    mm_status s = MM_OK;
    if (archive_read_open_filename(ar, tar, 1 << 16) != ARCHIVE_OK)
        s = MM_ERROR(MM_ERR_IO, "cannot open shard %s: %s", tar, archive_error_string(ar));
    size_t cap = 0;
    struct archive_entry *e;
    int r = ARCHIVE_EOF;
    while (s == MM_OK && (r = archive_read_next_header(ar, &e)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        if (!name || archive_entry_filetype(e) != AE_IFREG) continue;
        if (!batch_input_is_image_name(name)) {
            batch_input_note_skipped(out, name);
            continue;
        }
        char *key = sample_key(name), *source = malloc(strlen(tar) + strlen(name) + 2);
        batch_item *it = NULL;
        if (!key || !source) s = MM_ERROR(MM_ERR_NOMEM, "out of memory");
        else sprintf(source, "%s#%s", tar, name);
        if (s == MM_OK) s = batch_input_add_image(out, &cap, key, source, prompt, o, &it);
        if (s == MM_OK && !it->error) s = read_member(ar, e, tar, &it->image_data, &it->image_len);
        free(key), free(source);
    }
    if (s == MM_OK && r != ARCHIVE_EOF) s = MM_ERROR(MM_ERR_IO, "shard %s: %s", tar, archive_error_string(ar));
    archive_read_free(ar);
    if (s == MM_OK) s = batch_input_finish(out);
    if (s != MM_OK) batch_input_free(out);
    return s;
}
