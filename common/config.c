/* Typed getters over jansson for config files (config.h). JSON null counts as absent,
 * as HF configs write "pad_token_id": null for "not set". Must not guess types: a
 * present value of the wrong type is an error naming the file and the key. */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define J(x) ((json_t *)(x)) /* mm_json is jansson's json_t under another name */

mm_status mm_json_load(const char *path, mm_json **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        return MM_ERROR(errno == ENOENT ? MM_ERR_NOT_FOUND : MM_ERR_IO, "%s: cannot open: %s", path,
                        strerror(errno));
    }
    json_error_t err;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &err);
    int read_failed = ferror(f);
    fclose(f);
    if (read_failed) {
        json_decref(root);
        return MM_ERROR(MM_ERR_IO, "%s: read failed", path);
    }
    if (!root) {
        return MM_ERROR(MM_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", path, err.line, err.column,
                        err.text);
    }
    *out = (mm_json *)root;
    return MM_OK;
}

void mm_json_free(mm_json *j) { json_decref(J(j)); }

mm_json *mm_json_get(const mm_json *j, const char *key) {
    if (!j || !json_is_object(J(j))) return NULL;
    return (mm_json *)json_object_get(J(j), key);
}

int mm_json_has(const mm_json *j, const char *key) {
    const json_t *v = J(mm_json_get(j, key));
    return v && !json_is_null(v);
}

int mm_json_is_object(const mm_json *j) { return j && json_is_object(J(j)); }

/* Finds obj[key]: *out = NULL when obj is NULL or the member is absent or null; an error
 * when obj is not an object or the member fails `ok` (`want` says what was expected). */
static mm_status json_member(const mm_json *obj, const char *file, const char *key,
                             int (*ok)(const json_t *), const char *want, const json_t **out) {
    *out = NULL;
    if (!obj) return MM_OK;
    if (!json_is_object(J(obj)))
        return MM_ERROR(MM_ERR_FORMAT, "%s: reading key '%s' from a value that is not an object",
                        file, key);
    const json_t *v = json_object_get(J(obj), key);
    if (!v || json_is_null(v)) return MM_OK;
    if (!ok(v)) {
        char shown[MM_JSON_SHOWN_CAP];
        return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s' = %s must be %s", file, key,
                        mm_json_show((const mm_json *)v, shown, sizeof shown), want);
    }
    *out = v;
    return MM_OK;
}

const char *mm_json_show(const mm_json *v, char *buf, size_t cap) {
    /* JSON's own escaping turns control bytes into \uXXXX; ASCII keeps the line printable */
    char *s = json_dumps(J(v), JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII);
    if (!s) {
        snprintf(buf, cap, "(a value)");
        return buf;
    }
    size_t n = strlen(s);
    if (n < cap) memcpy(buf, s, n + 1);
    else if (cap > 4) snprintf(buf, cap, "%.*s...", (int)(cap - 4), s);
    else if (cap) buf[0] = 0;
    free(s);
    return buf;
}

static int is_int(const json_t *v) { return json_is_integer(v); }
static int is_num(const json_t *v) { return json_is_number(v); }
static int is_bool(const json_t *v) { return json_is_boolean(v); }
static int is_str(const json_t *v) { return json_is_string(v); }
static int is_int_or_list(const json_t *v) { return json_is_integer(v) || json_is_array(v); }
static int is_num_or_list(const json_t *v) { return json_is_number(v) || json_is_array(v); }

mm_status mm_json_int(const mm_json *obj, const char *file, const char *key, int64_t def,
                      int64_t *out) {
    const json_t *v;
    CHECK(json_member(obj, file, key, is_int, "an integer", &v));
    *out = v ? (int64_t)json_integer_value(v) : def;
    return MM_OK;
}

mm_status mm_json_int_in(const mm_json *obj, const char *file, const char *key, int64_t def, int64_t min,
                         int64_t max, int64_t *out) {
    const json_t *v;
    CHECK(json_member(obj, file, key, is_int, "an integer", &v));
    if (!v && (def < min || def > max))
        return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s' is missing (an integer in [%lld, %lld])", file, key,
                        (long long)min, (long long)max);
    int64_t x = v ? (int64_t)json_integer_value(v) : def;
    if (x < min || x > max)
        return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s' = %lld outside [%lld, %lld]", file, key, (long long)x,
                        (long long)min, (long long)max);
    *out = x;
    return MM_OK;
}

mm_status mm_json_i32_in(const mm_json *obj, const char *file, const char *key, int32_t def, int32_t min,
                         int32_t max, int32_t *out) {
    int64_t x;
    CHECK(mm_json_int_in(obj, file, key, def, min, max, &x));
    *out = (int32_t)x; /* in [min, max], so it fits */
    return MM_OK;
}

mm_status mm_json_num_in(const mm_json *obj, const char *file, const char *key, double def, double min,
                         double max, int open_min, double *out) {
    const json_t *v;
    CHECK(json_member(obj, file, key, is_num, "a number", &v));
    int bad_def = !(open_min ? def > min : def >= min) || !(def <= max);
    if (!v && bad_def)
        return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s' is missing (a number in %c%g, %g])", file, key,
                        open_min ? '(' : '[', min, max);
    double x = v ? json_number_value(v) : def;
    if (!(open_min ? x > min : x >= min) || !(x <= max))
        return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s' = %.17g outside %c%g, %g]", file, key, x, open_min ? '(' : '[',
                        min, max);
    *out = x;
    return MM_OK;
}

mm_status mm_json_num(const mm_json *obj, const char *file, const char *key, double def,
                      double *out) {
    const json_t *v;
    CHECK(json_member(obj, file, key, is_num, "a number", &v));
    *out = v ? json_number_value(v) : def;
    return MM_OK;
}

mm_status mm_json_bool(const mm_json *obj, const char *file, const char *key, int def, int *out) {
    const json_t *v;
    CHECK(json_member(obj, file, key, is_bool, "true or false", &v));
    *out = v ? json_is_true(v) : def;
    return MM_OK;
}

mm_status mm_json_str(const mm_json *obj, const char *file, const char *key, const char *def,
                      const char **out) {
    const json_t *v;
    CHECK(json_member(obj, file, key, is_str, "a string", &v));
    *out = v ? json_string_value(v) : def;
    return MM_OK;
}

/* Absent -> *count = 0. More than cap values is an error rather than a silent cut, since
 * a dropped value (an EOS id) would change behaviour. */
mm_status mm_json_int_list(const mm_json *obj, const char *file, const char *key, int64_t *vals,
                           int cap, int *count) {
    const json_t *v;
    *count = 0;
    CHECK(json_member(obj, file, key, is_int_or_list, "an integer or a list of integers", &v));
    if (!v) return MM_OK;
    if (json_is_integer(v)) {
        if (cap < 1) return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key '%s': no room for a value", file, key);
        vals[0] = (int64_t)json_integer_value(v);
        *count = 1;
        return MM_OK;
    }
    size_t n = json_array_size(v);
    if (n > (size_t)(cap < 0 ? 0 : cap))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key '%s' has %zu values, at most %d supported",
                        file, key, n, cap);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e))
            return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s': element %zu must be an integer", file,
                            key, i);
        vals[i] = (int64_t)json_integer_value(e);
    }
    *count = (int)n;
    return MM_OK;
}

mm_status mm_json_num_list(const mm_json *obj, const char *file, const char *key, double *vals, int cap,
                           int *count) {
    const json_t *v;
    *count = 0;
    CHECK(json_member(obj, file, key, is_num_or_list, "a number or a list of numbers", &v));
    if (!v) return MM_OK;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (n > (size_t)(cap < 0 ? 0 : cap))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: key '%s' has %zu values, at most %d supported", file, key, n, cap);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_number(e))
            return MM_ERROR(MM_ERR_FORMAT, "%s: key '%s': element %zu must be a number", file, key, i);
        vals[i] = json_number_value(e);
    }
    *count = (int)n;
    return MM_OK;
}

mm_status mm_json_load_parsed(const char *dir, const char *name, mm_json_parse_fn parse, void *out) {
    char file[4096];
    if ((size_t)snprintf(file, sizeof file, "%s/%s", dir, name) >= sizeof file)
        return MM_ERROR(MM_ERR_INVALID, "%s/%s: path too long", dir, name);
    mm_json *root;
    CHECK(mm_json_load(file, &root));
    mm_status s = parse(root, file, out);
    mm_json_free(root);
    return s;
}
