/* safetensors reader/writer: round trips, sharded index, and malformed files. Every bad
 * file must give the right status and a message naming the file (and tensor), never a
 * crash; the ASan build of this test also catches leaks and out-of-bounds reads. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/safetensors.h"
#include "tests/testutil.h"

static char tmp_dir[] = "/tmp/mm_test_st_XXXXXX";

static const char *tmp_path(const char *name) {
    static char bufs[4][512];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp_dir, name);
    return b;
}

static void tmp_cleanup(void) {
    DIR *d = opendir(tmp_dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) unlink(tmp_path(de->d_name));
    closedir(d);
    rmdir(tmp_dir);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

/* Reads a whole file; caller frees. */
static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    if (f && !fseek(f, 0, SEEK_END)) {
        long len = ftell(f);
        buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
        rewind(f);
        if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
            free(buf);
            buf = NULL;
        }
        *n = (size_t)len;
    }
    if (f) fclose(f);
    if (!buf) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    return buf;
}

/* A file with the given 8-byte header length, header text and data_size zero bytes. */
static void write_st_raw(const char *path, uint64_t hlen, const char *hdr, size_t data_size) {
    size_t n = 8 + strlen(hdr) + data_size;
    unsigned char *buf = calloc(1, n);
    if (!buf) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, hdr, strlen(hdr));
    write_bytes(path, buf, n);
    free(buf);
}

static void write_st(const char *path, const char *hdr, size_t data_size) {
    write_st_raw(path, strlen(hdr), hdr, data_size);
}

/* Opening `path` must fail with `code`, the message naming the file and `tensor`. */
static void expect_open_fails(const char *file, mm_status code, const char *tensor) {
    mm_safetensors *st = NULL;
    EXPECT_ERR(mm_safetensors_open(tmp_path(file), &st), code, file, tensor);
    EXPECT(st == NULL, "%s: handle set on failure", file);
    mm_safetensors_close(st);
}

/* ---- round trip ---- */

static float f32_data[2 * 3] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-3f, -7.0f};
static uint16_t f16_data[4], bf16_data[3 * 1 * 2];
static int32_t i32_data[5] = {1, -2, 3, 2147483647, -2147483647 - 1};

static const mm_st_write_tensor round_trip_tensors[] = {
    {"w.f32", MM_DTYPE_F32, 2, {2, 3}, f32_data},
    {"w.f16", MM_DTYPE_F16, 1, {4}, f16_data},
    {"w.bf16", MM_DTYPE_BF16, 3, {3, 1, 2}, bf16_data},
    {"ids", MM_DTYPE_I32, 1, {5}, i32_data},
    {"scalar", MM_DTYPE_F32, 0, {0}, f32_data},
    {"empty", MM_DTYPE_F16, 2, {0, 7}, NULL},
};
#define N_ROUND_TRIP (sizeof round_trip_tensors / sizeof round_trip_tensors[0])

static void check_tensor(const mm_st_tensor *t, const mm_st_write_tensor *w, const char *file) {
    size_t bytes = mm_dtype_size(w->dtype);
    for (int d = 0; d < w->ndim; d++) bytes *= (size_t)w->shape[d];
    EXPECT(t && t->dtype == w->dtype && t->ndim == w->ndim, "%s: dtype/rank", w->name);
    if (!t) return;
    EXPECT(!memcmp(t->shape, w->shape, sizeof(int64_t) * (size_t)w->ndim), "%s: shape", w->name);
    EXPECT(t->nbytes == bytes && (int64_t)(bytes / mm_dtype_size(w->dtype)) == t->numel,
           "%s: nbytes %zu numel %lld", w->name, t->nbytes, (long long)t->numel);
    EXPECT(!bytes || !memcmp(t->data, w->data, bytes), "%s: data differs", w->name);
    EXPECT(!strcmp(t->name, w->name) && mm_test_has(t->file, file), "%s: name/file %s", w->name, t->file);
}

static void test_round_trip(void) {
    for (int i = 0; i < 4; i++) f16_data[i] = mm_f32_to_f16(0.5f * (float)i - 1.0f);
    for (int i = 0; i < 6; i++) bf16_data[i] = mm_f32_to_bf16(3.0f * (float)i + 0.1f);
    const char *path = tmp_path("rt.safetensors");
    EXPECT(mm_safetensors_write(path, round_trip_tensors, N_ROUND_TRIP) == MM_OK, "write: %s",
           mm_error_last());

    size_t n;
    unsigned char *raw = read_bytes(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | raw[i];
    EXPECT((8 + hlen) % 8 == 0 && hlen < n && raw[8] == '{', "header length %llu",
           (unsigned long long)hlen);
    free(raw);

    mm_safetensors *st = NULL;
    EXPECT(mm_safetensors_open(path, &st) == MM_OK, "open: %s", mm_error_last());
    if (!st) return;
    EXPECT(mm_safetensors_count(st) == N_ROUND_TRIP, "count %zu", mm_safetensors_count(st));
    for (size_t i = 0; i < N_ROUND_TRIP; i++) {
        const mm_st_write_tensor *w = &round_trip_tensors[i];
        EXPECT(!strcmp(mm_safetensors_name(st, i), w->name), "name %zu", i);
        check_tensor(mm_safetensors_find(st, w->name), w, "rt.safetensors");
    }
    EXPECT(mm_safetensors_name(st, N_ROUND_TRIP) == NULL, "name past the end");

    const mm_st_tensor *t;
    EXPECT(mm_safetensors_get(st, "w.f32", 2, (int64_t[]){2, 3}, &t) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_safetensors_get(st, "w.bf16", 3, (int64_t[]){-1, 1, -1}, &t) == MM_OK, "wildcard: %s",
           mm_error_last());
    EXPECT(mm_safetensors_get(st, "w.f32", 2, NULL, &t) == MM_OK, "rank only: %s", mm_error_last());
    EXPECT(mm_safetensors_get(st, "scalar", 0, NULL, &t) == MM_OK && t->numel == 1, "scalar: %s",
           mm_error_last());
    EXPECT_ERR(mm_safetensors_get(st, "w.f32", 3, (int64_t[]){2, 3, 1}, &t), MM_ERR_FORMAT,
               "rt.safetensors", "w.f32");
    EXPECT_ERR(mm_safetensors_get(st, "w.f16", 1, (int64_t[]){5}, &t), MM_ERR_FORMAT,
               "rt.safetensors", "w.f16");
    EXPECT(t == NULL, "out set on a wrong shape");
    EXPECT_ERR(mm_safetensors_get(st, "nope", 1, NULL, &t), MM_ERR_NOT_FOUND, "rt.safetensors",
               "nope");
    mm_error_clear();
    EXPECT(mm_safetensors_find(st, "nope") == NULL && mm_error_last()[0] == '\0',
           "find of an absent tensor recorded: %s", mm_error_last());
    mm_safetensors_close(st);

    /* A directory holding model.safetensors opens it. */
    EXPECT(rename(path, tmp_path("model.safetensors")) == 0, "rename");
    EXPECT(mm_safetensors_open(tmp_dir, &st) == MM_OK, "open dir: %s", mm_error_last());
    if (st) check_tensor(mm_safetensors_find(st, "ids"), &round_trip_tensors[3], "model.safetensors");
    mm_safetensors_close(st);
    unlink(tmp_path("model.safetensors"));

    EXPECT_ERR(mm_safetensors_write(tmp_path("dup.safetensors"),
                                    (mm_st_write_tensor[]){{"a", MM_DTYPE_F32, 1, {1}, f32_data},
                                                           {"a", MM_DTYPE_F32, 1, {1}, f32_data}},
                                    2),
               MM_ERR_INVALID, "dup.safetensors", "'a'");
    EXPECT(access(tmp_path("dup.safetensors"), F_OK) != 0, "failed write left a file");
}

/* ---- sharded index ---- */

static void write_index(const char *weight_map) {
    char buf[1024];
    snprintf(buf, sizeof buf, "{\"metadata\": {\"total_size\": 48}, \"weight_map\": %s}",
             weight_map);
    write_bytes(tmp_path("model.safetensors.index.json"), buf, strlen(buf));
}

static void test_sharded(void) {
    const mm_st_write_tensor s1[] = {{"a", MM_DTYPE_F32, 2, {2, 3}, f32_data},
                                     {"b", MM_DTYPE_I32, 1, {5}, i32_data}};
    const mm_st_write_tensor s2[] = {{"c", MM_DTYPE_BF16, 2, {2, 3}, bf16_data},
                                     {"d", MM_DTYPE_F16, 1, {4}, f16_data},
                                     {"stray", MM_DTYPE_F16, 1, {4}, f16_data}};
    EXPECT(mm_safetensors_write(tmp_path("model-00001-of-00002.safetensors"), s1, 2) == MM_OK,
           "%s", mm_error_last());
    EXPECT(mm_safetensors_write(tmp_path("model-00002-of-00002.safetensors"), s2, 3) == MM_OK,
           "%s", mm_error_last());
    write_index("{\"a\": \"model-00001-of-00002.safetensors\", "
                "\"c\": \"model-00002-of-00002.safetensors\", "
                "\"b\": \"model-00001-of-00002.safetensors\", "
                "\"d\": \"model-00002-of-00002.safetensors\", "
                "\"e\": \"model-00002-of-00002.safetensors\"}");

    const char *paths[] = {tmp_dir, tmp_path("model.safetensors.index.json")};
    for (int p = 0; p < 2; p++) {
        mm_safetensors *st = NULL;
        EXPECT(mm_safetensors_open(paths[p], &st) == MM_OK, "open %s: %s", paths[p],
               mm_error_last());
        if (!st) continue;
        EXPECT(mm_safetensors_count(st) == 5 && !strcmp(mm_safetensors_name(st, 1), "c"),
               "count %zu", mm_safetensors_count(st));
        check_tensor(mm_safetensors_find(st, "d"), &s2[1], "model-00002-of-00002");
        check_tensor(mm_safetensors_find(st, "a"), &s1[0], "model-00001-of-00002");
        check_tensor(mm_safetensors_find(st, "b"), &s1[1], "model-00001-of-00002");
        check_tensor(mm_safetensors_find(st, "c"), &s2[0], "model-00002-of-00002");
        const mm_st_tensor *t;
        /* in the index but not in its shard; in the shard but not in the index */
        EXPECT_ERR(mm_safetensors_get(st, "e", -1, NULL, &t), MM_ERR_NOT_FOUND,
                   "model-00002-of-00002", "'e'");
        EXPECT_ERR(mm_safetensors_get(st, "stray", -1, NULL, &t), MM_ERR_NOT_FOUND,
                   "model.safetensors.index.json", "stray");
        mm_safetensors_close(st);
    }

    /* Index naming a shard that is missing: other tensors still load; the missing one names
     * the shard and the tensor. */
    write_index("{\"a\": \"model-00001-of-00002.safetensors\", "
                "\"z\": \"model-00003-of-00002.safetensors\"}");
    mm_safetensors *st = NULL;
    EXPECT(mm_safetensors_open(tmp_dir, &st) == MM_OK, "open: %s", mm_error_last());
    if (st) {
        const mm_st_tensor *t;
        EXPECT(mm_safetensors_get(st, "a", 2, (int64_t[]){2, 3}, &t) == MM_OK, "%s",
               mm_error_last());
        EXPECT_ERR(mm_safetensors_get(st, "z", -1, NULL, &t), MM_ERR_NOT_FOUND,
                   "model-00003-of-00002.safetensors", "'z'");
        EXPECT(mm_safetensors_find(st, "z") == NULL, "find of a tensor in a missing shard");
        mm_safetensors_close(st);
    }

    /* A malformed shard fails at lookup, naming the shard and the bad tensor. */
    write_st(tmp_path("bad-shard.safetensors"),
             "{\"q\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"r\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,20]}}", 16);
    write_index("{\"q\": \"bad-shard.safetensors\", \"r\": \"bad-shard.safetensors\"}");
    EXPECT(mm_safetensors_open(tmp_dir, &st) == MM_OK, "open: %s", mm_error_last());
    if (st) {
        const mm_st_tensor *t;
        EXPECT_ERR(mm_safetensors_get(st, "q", -1, NULL, &t), MM_ERR_FORMAT,
                   "bad-shard.safetensors", "'r'");
        EXPECT_ERR(mm_safetensors_get(st, "q", -1, NULL, &t), MM_ERR_FORMAT,
                   "bad-shard.safetensors", "'r'"); /* still an error the second time */
        mm_safetensors_close(st);
    }

    /* Bad index files fail at open. */
    const char *bad_json = "{\"weight_map\": {\n\"a\": }";
    write_bytes(tmp_path("model.safetensors.index.json"), bad_json, strlen(bad_json));
    expect_open_fails("model.safetensors.index.json", MM_ERR_FORMAT, ":2:");
    write_index("[1, 2]");
    expect_open_fails("model.safetensors.index.json", MM_ERR_FORMAT, "weight_map");
    write_index("{\"a\": 7}");
    expect_open_fails("model.safetensors.index.json", MM_ERR_FORMAT, "'a'");
    write_bytes(tmp_path("model.safetensors.index.json"), "{}", 2);
    expect_open_fails("model.safetensors.index.json", MM_ERR_FORMAT, "weight_map");
    /* entries that leave the model directory (whether or not the file exists) */
    static const char *const outside[] = {"{\"a\": \"../a.safetensors\"}", "{\"a\": \"/etc/passwd\"}",
                                          "{\"a\": \"sub/../../a.safetensors\"}", "{\"a\": \"..\"}",
                                          "{\"a\": \"\"}"};
    for (size_t i = 0; i < sizeof outside / sizeof *outside; i++) {
        write_index(outside[i]);
        expect_open_fails("model.safetensors.index.json", MM_ERR_FORMAT, "leaves the model directory");
    }
    /* a name quoting control bytes is escaped in the message: one printable line */
    write_index("{\"a\\u0007\\n\": \"../x\\u001b[31m\"}");
    EXPECT(mm_safetensors_open(tmp_dir, &st) == MM_ERR_FORMAT && strstr(mm_error_last(), "'a\\x07\\x0a'") &&
               strstr(mm_error_last(), "../x\\x1b[31m") && !strpbrk(mm_error_last(), "\a\n\x1b"),
           "control bytes: %s", mm_error_last());
    unlink(tmp_path("model.safetensors.index.json"));
}

/* ---- malformed single files ---- */

static void test_truncated(void) {
    const char *path = tmp_path("full.safetensors");
    EXPECT(mm_safetensors_write(path, round_trip_tensors, N_ROUND_TRIP) == MM_OK, "%s",
           mm_error_last());
    size_t n;
    unsigned char *raw = read_bytes(path, &n);
    size_t data = 8 + (size_t)raw[0] + ((size_t)raw[1] << 8); /* header < 64 KiB */
    /* Data order is write order: w.f32 [0,24) w.f16 [24,32) w.bf16 [32,44) ids [44,64)
     * scalar [64,68); a cut names the first tensor (in header order) it leaves short. */
    const struct {
        size_t at;
        mm_status code;
        const char *tensor;
    } cuts[] = {{0, MM_ERR_FORMAT, NULL},           {1, MM_ERR_FORMAT, NULL},
                {7, MM_ERR_FORMAT, NULL},           {8, MM_ERR_FORMAT, NULL},
                {9, MM_ERR_FORMAT, NULL},           {40, MM_ERR_FORMAT, NULL},
                {data - 1, MM_ERR_FORMAT, NULL},    {data, MM_ERR_FORMAT, "'w.f32'"},
                {data + 30, MM_ERR_FORMAT, "'w.f16'"}, {n - 12, MM_ERR_FORMAT, "'ids'"},
                {n - 1, MM_ERR_FORMAT, "'scalar'"}};
    EXPECT(n == data + 68, "file size %zu, data at %zu", n, data);
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_bytes(tmp_path("cut.safetensors"), raw, cuts[i].at);
        expect_open_fails("cut.safetensors", cuts[i].code, cuts[i].tensor);
    }
    free(raw);
}

typedef struct {
    const char *what;
    const char *header;
    size_t data_size;
    mm_status code;
    const char *tensor; /* the message must name it (NULL: no tensor involved) */
} bad_case;

static const bad_case bad_cases[] = {
    {"bad JSON", "{\"a\": {\"dtype\": \"F32\",", 0, MM_ERR_FORMAT, NULL},
    {"not an object", "[1, 2, 3]", 0, MM_ERR_FORMAT, NULL},
    {"entry not an object", "{\"a\": 5}", 0, MM_ERR_FORMAT, "'a'"},
    {"unknown dtype", "{\"w\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
     MM_ERR_FORMAT, "'w'"},
    {"missing dtype", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, MM_ERR_FORMAT, "'w'"},
    {"shape vs bytes", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
     MM_ERR_FORMAT, "'w'"},
    {"negative dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
     MM_ERR_FORMAT, "'w'"},
    {"float dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
     MM_ERR_FORMAT, "'w'"},
    {"shape not a list", "{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
     MM_ERR_FORMAT, "'w'"},
    {"rank too high",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
     MM_ERR_UNSUPPORTED, "'w'"},
    {"shape overflow",
     "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
     MM_ERR_FORMAT, "'w'"},
    {"offsets out of range", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 12,
     MM_ERR_FORMAT, "'w'"},
    {"offsets huge",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9223372036854775806,"
     "9223372036854775807]}}", 8, MM_ERR_FORMAT, "'w'"},
    {"begin > end", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
     MM_ERR_FORMAT, "'w'"},
    {"offsets not a pair", "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4,8]}}", 8,
     MM_ERR_FORMAT, "'w'"},
    {"negative offset", "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[-4,0]}}", 8,
     MM_ERR_FORMAT, "'w'"},
    {"overlap",
     "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, MM_ERR_FORMAT, "'y'"},
    {"contained",
     "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
     "\"y\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 16, MM_ERR_FORMAT, "'x'"},
    /* what the safetensors library refuses (InvalidOffset, MetadataIncompleteBuffer) */
    {"bytes after the last tensor", "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 6,
     MM_ERR_FORMAT, "2 bytes after the last tensor"},
    {"gap", "{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
     "\"y\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}", 12, MM_ERR_FORMAT, "'y'"},
    {"gap at the start", "{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8, MM_ERR_FORMAT, "'x'"},
    {"empty tensor inside another",
     "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
     "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 16, MM_ERR_FORMAT, "'e'"},
    {"no tensors, some bytes", "{}", 4, MM_ERR_FORMAT, "4 bytes after the last tensor"},
    {"duplicate name",
     "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, MM_ERR_FORMAT, "x"},
};

static void test_malformed(void) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        write_st(tmp_path("bad.safetensors"), c->header, c->data_size);
        int failed = mm_test_failed;
        expect_open_fails("bad.safetensors", c->code, c->tensor);
        if (mm_test_failed != failed) fprintf(stderr, "  (case: %s)\n", c->what);
    }
    /* Header length beyond the file, and absurd (2^63, 2^64-1). */
    write_st_raw(tmp_path("bad.safetensors"), 4096, "{}", 0);
    expect_open_fails("bad.safetensors", MM_ERR_FORMAT, "4096");
    write_st_raw(tmp_path("bad.safetensors"), (uint64_t)1 << 63, "{}", 0);
    expect_open_fails("bad.safetensors", MM_ERR_FORMAT, "9223372036854775808");
    write_st_raw(tmp_path("bad.safetensors"), UINT64_MAX, "{}", 0);
    expect_open_fails("bad.safetensors", MM_ERR_FORMAT, NULL);
    /* Accepted: metadata, header order unlike data order, empty tensors where one ends,
     * trailing spaces. */
    write_st(tmp_path("ok.safetensors"),
             "{\"__metadata__\":{\"format\":\"pt\"},"
             "\"y\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[16,20]},"
             "\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,16]}}   ", 20);
    mm_safetensors *st = NULL;
    EXPECT(mm_safetensors_open(tmp_path("ok.safetensors"), &st) == MM_OK, "%s", mm_error_last());
    EXPECT(st && mm_safetensors_count(st) == 3, "metadata counted as a tensor");
    mm_safetensors_close(st);
    unlink(tmp_path("ok.safetensors"));
    /* Missing file and directory without a model. */
    expect_open_fails("absent.safetensors", MM_ERR_NOT_FOUND, NULL);
    EXPECT_ERR(mm_safetensors_open(tmp_dir, &st), MM_ERR_NOT_FOUND, tmp_dir, "model.safetensors");
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_round_trip();
    test_sharded();
    test_truncated();
    test_malformed();
    tmp_cleanup();
    return mm_test_finish("test_safetensors");
}
