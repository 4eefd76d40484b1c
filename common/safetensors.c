/* safetensors reader (mmap, lazy per shard) and writer; see safetensors.h.
 * Names come from the index (or the single file's header) and are looked up through an
 * open-addressing hash table. A shard is mapped on the first lookup of a tensor it holds
 * and its whole header is validated before any tensor of it is handed out.
 * Not thread-safe: a lookup may map a shard. Must not: copy tensor data, trust any length
 * or offset from the file, or exit. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

/* Same bound as the reference (Rust) reader: a bigger header is corruption, not a model. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_FILE_NAME "model.safetensors"

typedef struct {
    char *path;
    void *map;   /* the whole file, read-only; NULL until the shard is needed */
    size_t size; /* bytes mapped */
} st_shard;

typedef struct {
    char *name;
    uint32_t shard;
    int resolved;   /* t is valid: its shard is mapped and validated */
    mm_st_tensor t;
} st_entry;

struct mm_safetensors {
    char *path;        /* what was opened (file or index), for messages */
    st_shard *shards;  /* [n_shards] */
    size_t n_shards;
    st_entry *entries; /* [n_entries], in header / weight_map order; cap_entries allocated */
    size_t n_entries, cap_entries;
    uint32_t *slots;   /* [n_slots] entry index + 1, 0 = empty; n_slots a power of two */
    size_t n_slots;
};

/* One tensor of a header, parsed and checked but not yet handed out. */
typedef struct {
    const char *name; /* owned by the header JSON */
    mm_dtype dtype;
    int ndim;
    int64_t shape[MM_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end; /* relative to the data section */
} st_range;

/* ---- name table ---- */

static uint64_t st_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Slot of `name`: holds its entry, or is the empty slot where it would go. */
static uint32_t *st_slot(const mm_safetensors *st, const char *name) {
    size_t mask = st->n_slots - 1;
    for (size_t i = st_hash(name) & mask;; i = (i + 1) & mask) {
        uint32_t *slot = &st->slots[i];
        if (!*slot || !strcmp(st->entries[*slot - 1].name, name)) return slot;
    }
}

static st_entry *st_entry_find(const mm_safetensors *st, const char *name) {
    if (!st->n_slots) return NULL;
    uint32_t *slot = st_slot(st, name);
    return *slot ? &st->entries[*slot - 1] : NULL;
}

/* Sizes the table for n names; called once, before any st_entry_add. */
static mm_status st_entries_init(mm_safetensors *st, size_t n) {
    if (n > UINT32_MAX / 4)
        return MM_ERROR(MM_ERR_FORMAT, "%s: %zu tensors is more than supported", st->path, n);
    size_t slots = 16;
    while (slots < 2 * n) slots *= 2; /* load factor <= 1/2 keeps probes short */
    st->entries = calloc(n ? n : 1, sizeof *st->entries);
    st->slots = calloc(slots, sizeof *st->slots);
    if (!st->entries || !st->slots) return MM_ERROR(MM_ERR_NOMEM, "%s: out of memory", st->path);
    st->cap_entries = n;
    st->n_slots = slots;
    return MM_OK;
}

static mm_status st_entry_add(mm_safetensors *st, const char *name, uint32_t shard,
                              st_entry **out) {
    uint32_t *slot = st_slot(st, name);
    if (*slot) return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' listed twice", st->path, name);
    if (st->n_entries == st->cap_entries)
        return MM_ERROR(MM_ERR_INTERNAL, "%s: name table full at '%s'", st->path, name);
    st_entry *e = &st->entries[st->n_entries];
    e->name = strdup(name);
    if (!e->name) return MM_ERROR(MM_ERR_NOMEM, "%s: out of memory", st->path);
    e->shard = shard;
    *slot = (uint32_t)++st->n_entries;
    *out = e;
    return MM_OK;
}

/* ---- header parsing and validation ---- */

static uint64_t st_read_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Reads a JSON array of non-negative integers (at most cap) into vals. */
static int st_json_uints(const json_t *a, int64_t *vals, int cap, int *n) {
    if (!json_is_array(a) || json_array_size(a) > (size_t)cap) return -1;
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
        vals[i] = (int64_t)json_integer_value(v);
    }
    *n = (int)json_array_size(a);
    return 0;
}

/* "[a, b, c]" for messages (-1 printed as "*"). */
static void st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && n < cap; d++) {
        const char *sep = d ? ", " : "";
        if (!shape || shape[d] < 0)
            n += (size_t)snprintf(buf + n, cap - n, "%s*", sep);
        else
            n += (size_t)snprintf(buf + n, cap - n, "%s%lld", sep, (long long)shape[d]);
    }
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* Checks one header entry: dtype, shape, offsets, and shape x dtype size == byte range. */
static mm_status st_range_parse(const char *path, const char *name, const json_t *v,
                                uint64_t data_size, st_range *r) {
    r->name = name;
    if (!json_is_object(v))
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': entry is not an object", path, name);
    const char *dt = json_string_value(json_object_get(v, "dtype"));
    if (!dt) return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': missing dtype", path, name);
    if (mm_dtype_parse(dt, &r->dtype))
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, name, dt);
    const json_t *shape = json_object_get(v, "shape");
    if (json_array_size(shape) > MM_MAX_DIMS)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: tensor '%s': rank %zu above %d", path, name,
                        json_array_size(shape), MM_MAX_DIMS);
    if (st_json_uints(shape, r->shape, MM_MAX_DIMS, &r->ndim))
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': shape is not a list of non-negative ints",
                        path, name);
    int64_t off[2];
    int n_off;
    if (st_json_uints(json_object_get(v, "data_offsets"), off, 2, &n_off) || n_off != 2 ||
        off[0] > off[1])
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': data_offsets is not [begin, end] with "
                        "0 <= begin <= end", path, name);
    r->begin = (uint64_t)off[0];
    r->end = (uint64_t)off[1];
    if (r->end > data_size)
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] beyond the "
                        "data section (%llu bytes)", path, name, (unsigned long long)r->begin,
                        (unsigned long long)r->end, (unsigned long long)data_size);
    uint64_t bytes = mm_dtype_size(r->dtype);
    r->numel = 1;
    for (int d = 0; d < r->ndim; d++) {
        if (__builtin_mul_overflow(r->numel, r->shape[d], &r->numel) ||
            __builtin_mul_overflow(bytes, (uint64_t)r->shape[d], &bytes))
            return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': shape too large", path, name);
    }
    if (bytes != r->end - r->begin) {
        char dims[256];
        st_shape_str(dims, sizeof dims, r->ndim, r->shape);
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': shape %s of %s needs %llu bytes but "
                        "data_offsets span %llu", path, name, dims, dt, (unsigned long long)bytes,
                        (unsigned long long)(r->end - r->begin));
    }
    return MM_OK;
}

static int st_range_cmp(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* The layout the safetensors library itself accepts (its Metadata::validate and
 * read_metadata): sorted by offset, the tensors tile the data section exactly, each one
 * beginning where the previous ended, the last ending at the end of the file. A gap,
 * an overlap or bytes after the last tensor are refused (InvalidOffset /
 * MetadataIncompleteBuffer there). Sorts a copy: the caller keeps header order, which
 * becomes the iteration order. */
static mm_status st_ranges_check_layout(const char *path, const st_range *ranges, size_t n, uint64_t data_size) {
    st_range *r = malloc((n ? n : 1) * sizeof *r);
    if (!r) return MM_ERROR(MM_ERR_NOMEM, "%s: out of memory", path);
    memcpy(r, ranges, n * sizeof *r);
    qsort(r, n, sizeof *r, st_range_cmp);
    uint64_t at = 0;
    mm_status rc = MM_OK;
    for (size_t i = 0; i < n && rc == MM_OK; i++) {
        if (r[i].begin < at)
            rc = MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' overlaps tensor '%s'", path, r[i].name, r[i - 1].name);
        else if (r[i].begin > at)
            rc = MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s': data_offsets begin at %llu, leaving %llu bytes no tensor "
                          "covers", path, r[i].name, (unsigned long long)r[i].begin,
                          (unsigned long long)(r[i].begin - at));
        at = r[i].end;
    }
    if (rc == MM_OK && at != data_size)
        rc = MM_ERROR(MM_ERR_FORMAT, "%s: %llu bytes after the last tensor are not covered by the header",
                      path, (unsigned long long)(data_size - at));
    free(r);
    return rc;
}

/* Parses the header at map[8..] into *hdr (an object) and every tensor into *ranges. */
static mm_status st_header_parse(const char *path, const unsigned char *map, size_t size,
                                 json_t **hdr, st_range **ranges, size_t *n, size_t *data_off) {
    uint64_t hlen = st_read_le64(map);
    if (hlen > ST_MAX_HEADER)
        return MM_ERROR(MM_ERR_FORMAT, "%s: header length %llu is absurd (file is %zu bytes)",
                        path, (unsigned long long)hlen, size);
    if (hlen > size - 8)
        return MM_ERROR(MM_ERR_FORMAT, "%s: header length %llu beyond the end of the file "
                        "(%zu bytes)", path, (unsigned long long)hlen, size);
    json_error_t err;
    *hdr = json_loadb((const char *)map + 8, hlen, JSON_REJECT_DUPLICATES, &err);
    if (!*hdr)
        return MM_ERROR(MM_ERR_FORMAT, "%s: header is not valid JSON (column %d): %s", path,
                        err.column, err.text);
    if (!json_is_object(*hdr))
        return MM_ERROR(MM_ERR_FORMAT, "%s: header is not a JSON object", path);
    *data_off = 8 + hlen;
    *ranges = calloc(json_object_size(*hdr) + 1, sizeof **ranges);
    if (!*ranges) return MM_ERROR(MM_ERR_NOMEM, "%s: out of memory", path);
    const char *name;
    json_t *v;
    *n = 0;
    json_object_foreach(*hdr, name, v) {
        if (!strcmp(name, "__metadata__")) continue;
        CHECK(st_range_parse(path, name, v, size - *data_off, &(*ranges)[*n]));
        (*n)++;
    }
    return st_ranges_check_layout(path, *ranges, *n, size - *data_off);
}

/* ---- shards ---- */

/* Maps the whole file read-only. `want` (may be NULL) names the tensor that needed it. */
static mm_status st_file_map(const char *path, const char *want, void **map, size_t *size) {
    char need[300] = "";
    if (want) snprintf(need, sizeof need, " (needed for tensor '%s')", want);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return MM_ERROR(errno == ENOENT ? MM_ERR_NOT_FOUND : MM_ERR_IO, "%s: cannot open%s: %s",
                        path, need, strerror(errno));
    struct stat sb;
    mm_status rc = MM_OK;
    if (fstat(fd, &sb) != 0) {
        rc = MM_ERROR(MM_ERR_IO, "%s: fstat failed: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        rc = MM_ERROR(MM_ERR_IO, "%s: not a regular file", path);
    } else if (sb.st_size < 8) {
        rc = MM_ERROR(MM_ERR_FORMAT, "%s: %lld bytes, shorter than the 8-byte header length", path,
                      (long long)sb.st_size);
    } else {
        *size = (size_t)sb.st_size;
        *map = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (*map == MAP_FAILED) {
            *map = NULL;
            rc = MM_ERROR(MM_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        }
    }
    close(fd);
    return rc;
}

/* Hands the validated ranges out: fills their entries (adding them when `adopt`, i.e. the
 * file itself is the list of names). Tensors of a shard that the index does not name are
 * unreachable, as in transformers. */
static mm_status st_shard_commit(mm_safetensors *st, uint32_t idx, const unsigned char *data,
                                 const st_range *r, size_t n, int adopt) {
    st_shard *sh = &st->shards[idx];
    if (adopt) CHECK(st_entries_init(st, n));
    for (size_t i = 0; i < n; i++) {
        st_entry *e = st_entry_find(st, r[i].name);
        if (adopt) CHECK(st_entry_add(st, r[i].name, idx, &e));
        if (!e || e->shard != idx) continue;
        mm_st_tensor *t = &e->t;
        t->name = e->name;
        t->file = sh->path;
        t->dtype = r[i].dtype;
        t->ndim = r[i].ndim;
        memcpy(t->shape, r[i].shape, sizeof t->shape);
        t->numel = r[i].numel;
        t->data = data + r[i].begin;
        t->nbytes = (size_t)(r[i].end - r[i].begin);
        e->resolved = 1;
    }
    return MM_OK;
}

/* Maps and validates shard idx; on failure nothing of it stays mapped or handed out,
 * so a later lookup tries (and reports) again. */
static mm_status st_shard_load(mm_safetensors *st, uint32_t idx, const char *want, int adopt) {
    st_shard *sh = &st->shards[idx];
    void *map = NULL;
    size_t size = 0, n = 0, data_off = 0;
    json_t *hdr = NULL;
    st_range *ranges = NULL;
    mm_status rc;
    CHECK_GOTO(st_file_map(sh->path, want, &map, &size), rc, out);
    CHECK_GOTO(st_header_parse(sh->path, map, size, &hdr, &ranges, &n, &data_off), rc, out);
    CHECK_GOTO(st_shard_commit(st, idx, (const unsigned char *)map + data_off, ranges, n, adopt),
               rc, out);
    sh->map = map;
    sh->size = size;
    map = NULL;
out:
    free(ranges);
    json_decref(hdr);
    if (map) munmap(map, size);
    return rc;
}

/* Adds a shard path (deduplicated; a model has few shards, so a linear scan is fine). */
static mm_status st_shard_add(mm_safetensors *st, const char *path, uint32_t *idx) {
    for (size_t i = 0; i < st->n_shards; i++) {
        if (!strcmp(st->shards[i].path, path)) {
            *idx = (uint32_t)i;
            return MM_OK;
        }
    }
    st_shard *s = realloc(st->shards, (st->n_shards + 1) * sizeof *s);
    if (!s) return MM_ERROR(MM_ERR_NOMEM, "%s: out of memory", st->path);
    st->shards = s;
    s[st->n_shards] = (st_shard){.path = strdup(path)};
    if (!s[st->n_shards].path) return MM_ERROR(MM_ERR_NOMEM, "%s: out of memory", st->path);
    *idx = (uint32_t)st->n_shards++;
    return MM_OK;
}

/* ---- open / lookup ---- */

static mm_status st_path_join(const char *dir, const char *name, char **out) {
    size_t n = strlen(dir) + strlen(name) + 2;
    *out = malloc(n);
    if (!*out) return MM_ERROR(MM_ERR_NOMEM, "out of memory joining '%s'", name);
    snprintf(*out, n, "%s/%s", dir, name);
    return MM_OK;
}

static mm_status st_open_file(mm_safetensors *st) {
    uint32_t idx;
    CHECK(st_shard_add(st, st->path, &idx));
    return st_shard_load(st, idx, NULL, 1);
}

/* A weight_map file name must stay inside the index's directory: relative, no ".."
 * component (a symlink inside it may point anywhere, as the HF cache's do), not empty. */
static mm_status st_shard_name_check(const char *index, const char *tensor, const char *file) {
    int bad = !file[0] || file[0] == '/';
    for (const char *c = file; !bad; c++) {
        size_t len = strcspn(c, "/");
        bad = len == 2 && c[0] == '.' && c[1] == '.';
        c += len;
        if (!*c) break;
    }
    if (bad)
        return MM_ERROR(MM_ERR_FORMAT, "%s: weight_map entry for tensor '%s' = \"%s\" leaves the model directory",
                        index, tensor, file);
    return MM_OK;
}

/* Reads weight_map; shard names are relative to the index's directory. */
static mm_status st_open_index(mm_safetensors *st) {
    mm_json *doc;
    CHECK(mm_json_load(st->path, &doc));
    json_t *map = json_object_get((json_t *)doc, "weight_map");
    mm_status rc = MM_OK;
    char *dir = strdup(st->path), *shard_path = NULL;
    CHECK_GOTO(CHECK_ALLOC(dir), rc, out);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    if (!json_is_object(map)) {
        rc = MM_ERROR(MM_ERR_FORMAT, "%s: no \"weight_map\" object", st->path);
        goto out;
    }
    CHECK_GOTO(st_entries_init(st, json_object_size(map)), rc, out);
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        const char *file = json_string_value(v);
        if (!file) {
            rc = MM_ERROR(MM_ERR_FORMAT, "%s: weight_map entry for tensor '%s' is not a string",
                          st->path, name);
            goto out;
        }
        uint32_t idx;
        st_entry *e;
        CHECK_GOTO(st_shard_name_check(st->path, name, file), rc, out);
        CHECK_GOTO(st_path_join(slash ? dir : ".", file, &shard_path), rc, out);
        CHECK_GOTO(st_shard_add(st, shard_path, &idx), rc, out);
        CHECK_GOTO(st_entry_add(st, name, idx, &e), rc, out);
        free(shard_path);
        shard_path = NULL;
    }
out:
    free(shard_path);
    free(dir);
    mm_json_free(doc);
    return rc;
}

/* A directory means its index if present, else its model.safetensors. */
static mm_status st_resolve_path(const char *path, char **out) {
    struct stat sb;
    if (stat(path, &sb) != 0)
        return MM_ERROR(errno == ENOENT ? MM_ERR_NOT_FOUND : MM_ERR_IO, "%s: cannot open: %s",
                        path, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) {
        *out = strdup(path);
        return CHECK_ALLOC(*out);
    }
    const char *names[] = {ST_INDEX_NAME, ST_FILE_NAME};
    for (int i = 0; i < 2; i++) {
        CHECK(st_path_join(path, names[i], out));
        if (access(*out, F_OK) == 0) return MM_OK;
        free(*out);
        *out = NULL;
    }
    return MM_ERROR(MM_ERR_NOT_FOUND, "%s: directory holds neither %s nor %s", path,
                    ST_INDEX_NAME, ST_FILE_NAME);
}

static int st_is_index(const char *path) {
    size_t n = strlen(path);
    return n >= 5 && !strcmp(path + n - 5, ".json");
}

mm_status mm_safetensors_open(const char *path, mm_safetensors **out) {
    *out = NULL;
    mm_safetensors *st = calloc(1, sizeof *st);
    mm_status rc;
    CHECK_GOTO(CHECK_ALLOC(st), rc, fail);
    CHECK_GOTO(st_resolve_path(path, &st->path), rc, fail);
    CHECK_GOTO(st_is_index(st->path) ? st_open_index(st) : st_open_file(st), rc, fail);
    *out = st;
    return MM_OK;
fail:
    mm_safetensors_close(st);
    return rc;
}

void mm_safetensors_close(mm_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_shards; i++) {
        if (st->shards[i].map) munmap(st->shards[i].map, st->shards[i].size);
        free(st->shards[i].path);
    }
    for (size_t i = 0; i < st->n_entries; i++) free(st->entries[i].name);
    free(st->shards);
    free(st->entries);
    free(st->slots);
    free(st->path);
    free(st);
}

/* Makes e->t valid, mapping its shard on first use. */
static mm_status st_entry_resolve(mm_safetensors *st, st_entry *e) {
    if (e->resolved) return MM_OK;
    const st_shard *sh = &st->shards[e->shard];
    if (!sh->map) CHECK(st_shard_load(st, e->shard, e->name, 0));
    if (!e->resolved)
        return MM_ERROR(MM_ERR_NOT_FOUND, "%s: tensor '%s' is listed in %s but absent from the "
                        "shard", sh->path, e->name, st->path);
    return MM_OK;
}

const mm_st_tensor *mm_safetensors_find(mm_safetensors *st, const char *name) {
    st_entry *e = st_entry_find(st, name);
    if (!e || st_entry_resolve(st, e) != MM_OK) return NULL;
    return &e->t;
}

static int st_shape_matches(const mm_st_tensor *t, int ndim, const int64_t *shape) {
    if (ndim < 0) return 1;
    if (t->ndim != ndim) return 0;
    for (int d = 0; shape && d < ndim; d++)
        if (shape[d] >= 0 && shape[d] != t->shape[d]) return 0;
    return 1;
}

/* ndim < 0 skips the shape check; shape == NULL checks the rank only. */
mm_status mm_safetensors_get(mm_safetensors *st, const char *name, int ndim,
                             const int64_t *shape, const mm_st_tensor **out) {
    *out = NULL;
    st_entry *e = st_entry_find(st, name);
    if (!e) return MM_ERROR(MM_ERR_NOT_FOUND, "%s: tensor '%s' not found", st->path, name);
    CHECK(st_entry_resolve(st, e));
    if (!st_shape_matches(&e->t, ndim, shape)) {
        char have[256], want[256];
        st_shape_str(have, sizeof have, e->t.ndim, e->t.shape);
        st_shape_str(want, sizeof want, ndim, shape);
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s", e->t.file,
                        name, have, want);
    }
    *out = &e->t;
    return MM_OK;
}

size_t mm_safetensors_count(const mm_safetensors *st) { return st->n_entries; }

const char *mm_safetensors_name(const mm_safetensors *st, size_t i) {
    return i < st->n_entries ? st->entries[i].name : NULL;
}

/* ---- writer ---- */

/* Byte size of a tensor to write, with its arguments checked. */
static mm_status st_write_nbytes(const char *path, const mm_st_write_tensor *t, uint64_t *nbytes) {
    if (!t->name || (unsigned)t->dtype >= MM_DTYPE_COUNT || t->ndim < 0 || t->ndim > MM_MAX_DIMS)
        return MM_ERROR(MM_ERR_INVALID, "%s: tensor '%s': bad name, dtype or rank", path,
                        t->name ? t->name : "(null)");
    *nbytes = mm_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0 || __builtin_mul_overflow(*nbytes, (uint64_t)t->shape[d], nbytes))
            return MM_ERROR(MM_ERR_INVALID, "%s: tensor '%s': bad shape", path, t->name);
    }
    if (*nbytes && !t->data)
        return MM_ERROR(MM_ERR_INVALID, "%s: tensor '%s': no data", path, t->name);
    return MM_OK;
}

/* {"dtype":..,"shape":[..],"data_offsets":[begin,end]}; NULL when out of memory. */
static json_t *st_write_entry(const mm_st_write_tensor *t, uint64_t begin, uint64_t end) {
    json_t *e = json_object(), *shape = json_array(), *off = json_array();
    int bad = !e || !shape || !off;
    for (int d = 0; !bad && d < t->ndim; d++)
        bad = json_array_append_new(shape, json_integer(t->shape[d]));
    if (!bad)
        bad = json_array_append_new(off, json_integer((json_int_t)begin)) ||
              json_array_append_new(off, json_integer((json_int_t)end)) ||
              json_object_set_new(e, "dtype", json_string(mm_dtype_name(t->dtype))) ||
              json_object_set(e, "shape", shape) || json_object_set(e, "data_offsets", off);
    json_decref(shape);
    json_decref(off);
    if (bad) {
        json_decref(e);
        return NULL;
    }
    return e;
}

/* The header text, space-padded so that 8 + length is a multiple of 8. */
static mm_status st_write_header(const char *path, const mm_st_write_tensor *tensors, size_t n,
                                 char **text, size_t *len) {
    json_t *hdr = json_object();
    CHECK(CHECK_ALLOC(hdr));
    uint64_t off = 0, nbytes;
    mm_status rc = MM_OK;
    for (size_t i = 0; i < n; i++) {
        CHECK_GOTO(st_write_nbytes(path, &tensors[i], &nbytes), rc, out);
        if (json_object_get(hdr, tensors[i].name)) {
            rc = MM_ERROR(MM_ERR_INVALID, "%s: tensor '%s' given twice", path, tensors[i].name);
            goto out;
        }
        if (json_object_set_new(hdr, tensors[i].name, st_write_entry(&tensors[i], off, off + nbytes))) {
            rc = MM_ERROR(MM_ERR_NOMEM, "%s: out of memory building the header", path);
            goto out;
        }
        off += nbytes;
    }
    char *s = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    CHECK_GOTO(CHECK_ALLOC(s), rc, out);
    size_t n_s = strlen(s), padded = (n_s + 7) & ~(size_t)7;
    *text = realloc(s, padded + 1);
    if (!*text) {
        free(s);
        rc = MM_ERROR(MM_ERR_NOMEM, "%s: out of memory padding the header", path);
        goto out;
    }
    memset(*text + n_s, ' ', padded - n_s);
    (*text)[padded] = '\0';
    *len = padded;
out:
    json_decref(hdr);
    return rc;
}

static mm_status st_write_all(FILE *f, const char *path, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, f) != n)
        return MM_ERROR(MM_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return MM_OK;
}

mm_status mm_safetensors_write(const char *path, const mm_st_write_tensor *tensors, size_t n) {
    char *hdr = NULL;
    size_t hlen = 0;
    CHECK(st_write_header(path, tensors, n, &hdr, &hlen));
    FILE *f = fopen(path, "wb");
    mm_status rc = MM_OK;
    if (!f) {
        rc = MM_ERROR(MM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        goto out;
    }
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    CHECK_GOTO(st_write_all(f, path, le, 8), rc, close);
    CHECK_GOTO(st_write_all(f, path, hdr, hlen), rc, close);
    for (size_t i = 0; i < n; i++) {
        uint64_t nbytes;
        CHECK_GOTO(st_write_nbytes(path, &tensors[i], &nbytes), rc, close);
        CHECK_GOTO(st_write_all(f, path, tensors[i].data, (size_t)nbytes), rc, close);
    }
close:
    if (fclose(f) != 0 && rc == MM_OK)
        rc = MM_ERROR(MM_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    if (rc != MM_OK) unlink(path);
out:
    free(hdr);
    return rc;
}
