/* See batch_input.h. Every line goes through parse_item, the --images mode too (it
 * builds the same JSON object a user would have written). Values are checked for type
 * and sign only; ranges are the service's to judge (its INVALID_ARGUMENT becomes the
 * line's error). */
#include "batch_input.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "tools/jsonl_results.h"

static const char *const task_names[] = {"chat", "caption", "generate"};

const char *batch_task_name(batch_task t) { return task_names[t]; }

int batch_task_parse(const char *name, batch_task *t) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, task_names[i])) return *t = (batch_task)i, 0;
    return -1;
}

/* The numeric fields of a line and where they go in the item. */
typedef enum { FIELD_I32, FIELD_F32, FIELD_U64 } field_kind;
static const struct {
    const char *name;
    field_kind kind;
    size_t offset;
} numeric_fields[] = {
    {"max_tokens", FIELD_I32, offsetof(batch_item, sampling.max_new_tokens)},
    {"temperature", FIELD_F32, offsetof(batch_item, sampling.temperature)},
    {"top_p", FIELD_F32, offsetof(batch_item, sampling.top_p)},
    {"top_k", FIELD_I32, offsetof(batch_item, sampling.top_k)},
    {"seed", FIELD_U64, offsetof(batch_item, sampling.seed)},
    {"steps", FIELD_I32, offsetof(batch_item, image.steps)},
    {"guidance", FIELD_F32, offsetof(batch_item, image.guidance)},
    {"image_seed", FIELD_U64, offsetof(batch_item, image.seed)},
};
#define N_NUMERIC (sizeof numeric_fields / sizeof numeric_fields[0])
#define KNOWN_FIELDS "id, task, prompt, images, max_tokens, temperature, top_p, top_k, seed, steps, guidance, sampler, image_seed"

static int is_known_field(const char *k) {
    static const char *const other[] = {"id", "task", "prompt", "images", "sampler"};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        if (!strcmp(k, other[i])) return 1;
    for (size_t i = 0; i < N_NUMERIC; i++)
        if (!strcmp(k, numeric_fields[i].name)) return 1;
    return 0;
}

/* Sets it->error (printf-style); returns -1 so callers can `return line_error(...)`. */
__attribute__((format(printf, 2, 3))) static int line_error(batch_item *it, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    free(it->error);
    it->error = malloc((size_t)n + 1);
    if (it->error) {
        va_start(ap, fmt);
        vsnprintf(it->error, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int set_numeric(batch_item *it, const char *name, field_kind kind, size_t offset, const json_t *v) {
    char *dst = (char *)it + offset;
    if (kind == FIELD_F32) {
        double d = json_is_number(v) ? json_number_value(v) : -1;
        if (!json_is_number(v) || !isfinite(d) || d < 0 || d > 3.4e38) return line_error(it, "\"%s\" must be a number >= 0", name);
        *(float *)dst = (float)d;
        return 0;
    }
    json_int_t i = json_is_integer(v) ? json_integer_value(v) : -1;
    if (i < 0 || (kind == FIELD_I32 && i > INT32_MAX)) return line_error(it, "\"%s\" must be an integer >= 0", name);
    if (kind == FIELD_I32) *(int32_t *)dst = (int32_t)i;
    else *(uint64_t *)dst = (uint64_t)i;
    return 0;
}

/* "file://" stripped; relative paths are taken from base_dir ("" = as given). */
static char *resolve_path(const char *base_dir, const char *p) {
    if (!strncmp(p, "file://", 7)) p += 7;
    size_t nb = p[0] == '/' || !base_dir[0] ? 0 : strlen(base_dir) + 1;
    char *out = malloc(nb + strlen(p) + 1);
    if (!out) return NULL;
    if (nb) snprintf(out, nb + strlen(p) + 1, "%s/%s", base_dir, p);
    else strcpy(out, p);
    return out;
}

static int parse_images(batch_item *it, const json_t *v, const char *base_dir) {
    if (!v) return 0;
    if (!json_is_array(v)) return line_error(it, "\"images\" must be an array of file paths");
    it->image_paths = calloc(json_array_size(v) + 1, sizeof(char *));
    if (!it->image_paths) return line_error(it, "out of memory");
    size_t i;
    json_t *p;
    json_array_foreach(v, i, p) {
        if (!json_is_string(p) || !json_string_length(p)) return line_error(it, "\"images\"[%zu] must be a file path", i);
        it->image_paths[i] = resolve_path(base_dir, json_string_value(p));
        if (!it->image_paths[i]) return line_error(it, "out of memory");
        it->n_images = i + 1;
    }
    return 0;
}

/* The id: a non-empty string or an integer (written in decimal). */
static int parse_id(batch_item *it, const json_t *v) {
    char buf[32];
    const char *s = NULL;
    if (json_is_string(v) && json_string_length(v) && strlen(json_string_value(v)) == json_string_length(v))
        s = json_string_value(v);
    else if (json_is_integer(v)) snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v)), s = buf;
    if (!v) return line_error(it, "missing \"id\"");
    if (!s) return line_error(it, "\"id\" must be a non-empty string (without NUL) or an integer");
    it->id = strdup(s);
    return it->id ? 0 : line_error(it, "out of memory");
}

/* Fills it from one object (the line's fields over the defaults). On a bad field,
 * it->error says which; the id is kept when it was fine. */
static void parse_item(batch_item *it, const json_t *line_obj, const batch_input_options *o, const char *base_dir) {
    it->task = o->task;
    if (parse_id(it, json_object_get(line_obj, "id"))) return;
    json_t *obj = o->defaults ? json_deep_copy(o->defaults) : json_object();
    if (!obj || json_object_update(obj, (json_t *)line_obj)) {
        json_decref(obj);
        line_error(it, "out of memory");
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        if (!is_known_field(k)) {
            line_error(it, "unknown field \"%s\" (known: " KNOWN_FIELDS ")", k);
            goto out;
        }
    }
    if ((v = json_object_get(obj, "task")) && (!json_is_string(v) || batch_task_parse(json_string_value(v), &it->task))) {
        line_error(it, "\"task\" must be \"caption\", \"generate\" or \"chat\"");
        goto out;
    }
    v = json_object_get(obj, "prompt");
    if (!json_is_string(v) || !json_string_length(v)) {
        line_error(it, "\"prompt\" must be a non-empty string");
        goto out;
    }
    if (!(it->prompt = strdup(json_string_value(v)))) {
        line_error(it, "out of memory");
        goto out;
    }
    if (parse_images(it, json_object_get(obj, "images"), base_dir)) goto out;
    if (it->task == BATCH_TASK_CAPTION && !it->n_images) {
        line_error(it, "task caption needs at least one image in \"images\"");
        goto out;
    }
    for (size_t i = 0; i < N_NUMERIC; i++)
        if ((v = json_object_get(obj, numeric_fields[i].name)) &&
            set_numeric(it, numeric_fields[i].name, numeric_fields[i].kind, numeric_fields[i].offset, v))
            goto out;
    if ((v = json_object_get(obj, "sampler"))) {
        if (!json_is_string(v)) {
            line_error(it, "\"sampler\" must be a string");
            goto out;
        }
        if (!(it->sampler = strdup(json_string_value(v)))) {
            line_error(it, "out of memory");
            goto out;
        }
        it->image.sampler = it->sampler;
    }
out:
    json_decref(obj);
}

static void item_init(batch_item *it, int line) {
    memset(it, 0, sizeof *it);
    it->line = line;
    metamorph__v1__sampling_params__init(&it->sampling);
    metamorph__v1__image_params__init(&it->image);
}

static void parse_line(batch_item *it, const char *text, size_t len, const batch_input_options *o, const char *base_dir) {
    json_error_t jerr;
    json_t *obj = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj) line_error(it, "invalid JSON: %s (column %d)", jerr.text, jerr.column);
    else if (!json_is_object(obj)) line_error(it, "not a JSON object");
    else parse_item(it, obj, o, base_dir);
    json_decref(obj);
}

/* The first line with an id keeps it; later ones lose it (keyed by line) with an
 * error naming the first. Then every item gets its results key. */
static mm_status finish_items(batch_input *in) {
    json_t *first_line = json_object(); /* id -> line */
    CHECK(CHECK_ALLOC(first_line));
    mm_status s = MM_OK;
    for (size_t i = 0; i < in->n && s == MM_OK; i++) {
        batch_item *it = &in->items[i];
        if (it->id) {
            json_t *seen = json_object_get(first_line, it->id);
            if (seen) {
                line_error(it, "duplicate id \"%s\" (first on line %d)", it->id, (int)json_integer_value(seen));
                free(it->id);
                it->id = NULL;
            } else if (json_object_set_new(first_line, it->id, json_integer(it->line))) {
                s = MM_ERROR(MM_ERR_NOMEM, "out of memory indexing ids");
            }
        }
        if (s == MM_OK && !(it->key = jsonl_results_key(it->id, it->line))) s = MM_ERROR(MM_ERR_NOMEM, "out of memory");
    }
    json_decref(first_line);
    return s;
}

static mm_status push_item(batch_input *in, size_t *cap, int line, batch_item **out) {
    if (in->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        batch_item *n = realloc(in->items, nc * sizeof *n);
        CHECK(CHECK_ALLOC(n));
        in->items = n, *cap = nc;
    }
    *out = &in->items[in->n++];
    item_init(*out, line);
    return MM_OK;
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

mm_status batch_input_load_jsonl(const char *path, const batch_input_options *o, batch_input *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return MM_ERROR(MM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char base_dir[4096];
    snprintf(base_dir, sizeof base_dir, "%s", path);
    char *slash = strrchr(base_dir, '/');
    if (slash) *slash = 0;
    else base_dir[0] = 0;
    if (slash == base_dir) snprintf(base_dir, sizeof base_dir, "/");
    char *text = NULL;
    size_t text_cap = 0, cap = 0;
    ssize_t len;
    mm_status s = MM_OK;
    for (int line = 1; s == MM_OK && (len = getline(&text, &text_cap, f)) >= 0; line++) {
        if (is_blank(text, (size_t)len)) continue;
        batch_item *it;
        CHECK_GOTO(push_item(out, &cap, line, &it), s, done);
        parse_line(it, text, (size_t)len, o, base_dir);
    }
    if (ferror(f)) s = MM_ERROR(MM_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    if (s == MM_OK) s = finish_items(out);
done:
    free(text);
    fclose(f);
    if (s != MM_OK) batch_input_free(out);
    return s;
}

int batch_input_is_image_name(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

void batch_input_note_skipped(batch_input *in, const char *name) {
    if (in->n_skipped < BATCH_SKIPPED_SHOWN) in->skipped[in->n_skipped] = strdup(name); /* NULL: not shown */
    in->n_skipped++;
}

mm_status batch_input_add_image(batch_input *in, size_t *cap, const char *id, const char *path, const char *prompt,
                                const batch_input_options *o, batch_item **out) {
    /* the line a user would have written: {"id": ID, "prompt": P, "images": [PATH]} */
    batch_item *it;
    CHECK(push_item(in, cap, (int)in->n + 1, &it));
    json_t *obj = json_object(), *images = json_array();
    mm_status s = MM_OK;
    if (!obj || !images) s = MM_ERROR(MM_ERR_NOMEM, "out of memory");
    else if (json_array_append_new(images, json_string(path)) || json_object_set_new(obj, "id", json_string(id)) ||
             json_object_set_new(obj, "prompt", json_string(prompt)) || json_object_set(obj, "images", images))
        line_error(it, "file name %s is not UTF-8", path);
    else parse_item(it, obj, o, "");
    json_decref(obj), json_decref(images);
    *out = it;
    return s;
}

mm_status batch_input_finish(batch_input *in) { return finish_items(in); }

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

typedef struct {
    char **names; /* relative paths of the images found */
    size_t n, cap;
} name_list;

/* Walks dir/rel (rel "" at the top), adding image paths to l and counting the rest in
 * in. Directories given by a symbolic link are not entered (no cycles). */
static mm_status walk_dir(const char *dir, const char *rel, name_list *l, batch_input *in, int depth) {
    char path[8192];
    snprintf(path, sizeof path, "%s%s%s", dir, rel[0] ? "/" : "", rel);
    if (depth > 64) return MM_ERROR(MM_ERR_INVALID, "%s: directories nested deeper than 64", path);
    DIR *d = opendir(path);
    if (!d) return MM_ERROR(MM_ERR_IO, "cannot open directory %s: %s", path, strerror(errno));
    mm_status s = MM_OK;
    struct dirent *e;
    while (s == MM_OK && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char child[4096], full[8192 + 4096];
        if (snprintf(child, sizeof child, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name) >= (int)sizeof child) {
            s = MM_ERROR(MM_ERR_INVALID, "path too long under %s", path);
            break;
        }
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        struct stat st;
        if (lstat(full, &st) != 0) {
            s = MM_ERROR(MM_ERR_IO, "cannot stat %s: %s", full, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            s = walk_dir(dir, child, l, in, depth + 1);
        } else if (!batch_input_is_image_name(e->d_name)) {
            batch_input_note_skipped(in, child);
        } else {
            if (l->n == l->cap) {
                l->cap = l->cap ? l->cap * 2 : 256;
                char **nn = realloc(l->names, l->cap * sizeof *nn);
                if ((s = CHECK_ALLOC(nn)) != MM_OK) break;
                l->names = nn;
            }
            if (!(l->names[l->n] = strdup(child))) s = MM_ERROR(MM_ERR_NOMEM, "out of memory");
            else l->n++;
        }
    }
    closedir(d);
    return s;
}

mm_status batch_input_load_image_dir(const char *dir, const char *prompt, const batch_input_options *o,
                                     batch_input *out) {
    memset(out, 0, sizeof *out);
    name_list l = {0};
    size_t cap = 0;
    mm_status s = walk_dir(dir, "", &l, out, 0);
    if (s == MM_OK) qsort(l.names, l.n, sizeof *l.names, compare_names);
    for (size_t i = 0; i < l.n && s == MM_OK; i++) {
        char *path = resolve_path(dir, l.names[i]);
        batch_item *it;
        s = path ? batch_input_add_image(out, &cap, l.names[i], path, prompt, o, &it) : MM_ERROR(MM_ERR_NOMEM, "out of memory");
        free(path);
    }
    for (size_t i = 0; i < l.n; i++) free(l.names[i]);
    free(l.names);
    if (s == MM_OK) s = finish_items(out);
    if (s != MM_OK) batch_input_free(out);
    return s;
}

void batch_input_free(batch_input *in) {
    for (size_t i = 0; i < in->n; i++) {
        batch_item *it = &in->items[i];
        for (size_t k = 0; k < it->n_images; k++) free(it->image_paths[k]);
        free(it->image_paths), free(it->id), free(it->key), free(it->error), free(it->prompt), free(it->sampler);
        free(it->image_data);
    }
    for (size_t i = 0; i < in->n_skipped && i < BATCH_SKIPPED_SHOWN; i++) free(in->skipped[i]);
    free(in->items);
    memset(in, 0, sizeof *in);
}
