/* JSON config getters: values, defaults for absent (or null) keys, wrong-type errors that
 * name file and key, int lists (eos_token_id as int or array), parse errors with
 * line/column, missing files. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "tests/testutil.h"

static char tmp_dir[] = "/tmp/mm_test_cfg_XXXXXX";

static const char *write_json(const char *name, const char *text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, strlen(text), f) != strlen(text) || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    return path;
}

static const char *config_text =
    "{\n"
    "  \"hidden_size\": 4096,\n"
    "  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_theta\": 500000,\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"model_type\": \"metamorph_llama\",\n"
    "  \"pad_token_id\": null,\n"
    "  \"eos_token_id\": [128001, 128009],\n"
    "  \"bos_token_id\": 128000,\n"
    "  \"bad_list\": [1, \"two\"],\n"
    "  \"vision_config\": {\"image_size\": 384}\n"
    "}\n";

static void test_getters(void) {
    const char *f = "config.json";
    mm_json *j = NULL;
    EXPECT(mm_json_load(write_json(f, config_text), &j) == MM_OK, "load: %s", mm_error_last());
    if (!j) return;
    int64_t i;
    double d;
    int b;
    const char *s;
    EXPECT(mm_json_int(j, f, "hidden_size", 0, &i) == MM_OK && i == 4096, "int %lld", (long long)i);
    EXPECT(mm_json_num(j, f, "rms_norm_eps", 0, &d) == MM_OK && d == 1e-5, "num %g", d);
    EXPECT(mm_json_num(j, f, "rope_theta", 0, &d) == MM_OK && d == 500000.0, "int as num %g", d);
    EXPECT(mm_json_bool(j, f, "tie_word_embeddings", 1, &b) == MM_OK && b == 0, "bool %d", b);
    EXPECT(mm_json_str(j, f, "model_type", NULL, &s) == MM_OK && !strcmp(s, "metamorph_llama"),
           "str %s", s ? s : "(null)");

    /* absent and null keys take the default */
    EXPECT(mm_json_int(j, f, "absent", -7, &i) == MM_OK && i == -7, "int default");
    EXPECT(mm_json_int(j, f, "pad_token_id", -1, &i) == MM_OK && i == -1, "null -> default");
    EXPECT(mm_json_num(j, f, "absent", 2.5, &d) == MM_OK && d == 2.5, "num default");
    EXPECT(mm_json_bool(j, f, "absent", 1, &b) == MM_OK && b == 1, "bool default");
    EXPECT(mm_json_str(j, f, "absent", "x", &s) == MM_OK && !strcmp(s, "x"), "str default");
    EXPECT(mm_json_int(NULL, f, "absent", 3, &i) == MM_OK && i == 3, "NULL object -> default");

    /* nested objects */
    mm_json *vc = mm_json_get(j, "vision_config");
    EXPECT(vc && mm_json_int(vc, f, "image_size", 0, &i) == MM_OK && i == 384, "nested");
    EXPECT(mm_json_get(j, "absent") == NULL && mm_json_get(NULL, "x") == NULL, "get absent");
    EXPECT(mm_json_get(mm_json_get(j, "hidden_size"), "x") == NULL, "get on a non-object");

    /* wrong types name the file and the key */
    EXPECT_ERR(mm_json_int(j, f, "rms_norm_eps", 0, &i), MM_ERR_FORMAT, f, "rms_norm_eps");
    EXPECT_ERR(mm_json_int(j, f, "model_type", 0, &i), MM_ERR_FORMAT, f, "model_type");
    EXPECT_ERR(mm_json_num(j, f, "model_type", 0, &d), MM_ERR_FORMAT, f, "model_type");
    EXPECT_ERR(mm_json_bool(j, f, "hidden_size", 0, &b), MM_ERR_FORMAT, f, "hidden_size");
    EXPECT_ERR(mm_json_str(j, f, "hidden_size", NULL, &s), MM_ERR_FORMAT, f, "hidden_size");
    EXPECT_ERR(mm_json_int(mm_json_get(j, "eos_token_id"), f, "x", 0, &i), MM_ERR_FORMAT, f, "'x'");

    /* int lists */
    int64_t vals[4];
    int n = -1;
    EXPECT(mm_json_int_list(j, f, "eos_token_id", vals, 4, &n) == MM_OK && n == 2 &&
               vals[0] == 128001 && vals[1] == 128009, "eos list n=%d", n);
    EXPECT(mm_json_int_list(j, f, "bos_token_id", vals, 4, &n) == MM_OK && n == 1 &&
               vals[0] == 128000, "single int n=%d", n);
    EXPECT(mm_json_int_list(j, f, "absent", vals, 4, &n) == MM_OK && n == 0, "absent list n=%d", n);
    EXPECT_ERR(mm_json_int_list(j, f, "bad_list", vals, 4, &n), MM_ERR_FORMAT, f, "bad_list");
    EXPECT_ERR(mm_json_int_list(j, f, "model_type", vals, 4, &n), MM_ERR_FORMAT, f, "model_type");
    EXPECT_ERR(mm_json_int_list(j, f, "eos_token_id", vals, 1, &n), MM_ERR_UNSUPPORTED, f,
               "eos_token_id");
    mm_json_free(j);

    /* eos_token_id as a plain int */
    EXPECT(mm_json_load(write_json("gen.json", "{\"eos_token_id\": 128009}"), &j) == MM_OK, "%s",
           mm_error_last());
    EXPECT(mm_json_int_list(j, "gen.json", "eos_token_id", vals, 4, &n) == MM_OK && n == 1 &&
               vals[0] == 128009, "eos int n=%d", n);
    mm_json_free(j);
}

static void test_load_errors(void) {
    mm_json *j = NULL;
    /* the second ',' is line 3, column 14 */
    EXPECT_ERR(mm_json_load(write_json("bad.json", "{\n  \"a\": 1,\n  \"b\": [1, 2,,]\n}\n"), &j),
               MM_ERR_FORMAT, "bad.json:3:14:", NULL);
    EXPECT(j == NULL, "doc set on failure");
    EXPECT_ERR(mm_json_load(write_json("dup.json", "{\"a\": 1, \"a\": 2}"), &j), MM_ERR_FORMAT,
               "dup.json", NULL);
    EXPECT_ERR(mm_json_load(write_json("empty.json", ""), &j), MM_ERR_FORMAT, "empty.json", NULL);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/missing.json", tmp_dir);
    EXPECT_ERR(mm_json_load(missing, &j), MM_ERR_NOT_FOUND, "missing.json", NULL);
}

/* Ranged getters: the value is checked before any narrowing and every refusal names the
 * file, the key and the value; a default outside the range makes the key required. */
static void test_ranges(void) {
    mm_json *j = NULL;
    EXPECT(mm_json_load(write_json("range.json", "{\"big\": 4294967392, \"neg\": -3, \"ok\": 96, \"f\": 0.5, "
                                                 "\"zero\": 0, \"s\": \"x\\u0001y\", \"null\": null}"), &j) == MM_OK,
           "load: %s", mm_error_last());
    int64_t v = 0;
    int32_t v32 = 0;
    double d = 0;
    EXPECT_ERR(mm_json_int_in(j, "range.json", "big", 0, 1, INT32_MAX, &v), MM_ERR_FORMAT, "'big'", "4294967392");
    EXPECT_ERR(mm_json_i32_in(j, "range.json", "big", 0, 1, INT32_MAX, &v32), MM_ERR_FORMAT, "range.json", "4294967392");
    EXPECT_ERR(mm_json_int_in(j, "range.json", "neg", 0, 0, 10, &v), MM_ERR_FORMAT, "'neg'", "-3");
    EXPECT(mm_json_i32_in(j, "range.json", "ok", 0, 1, 100, &v32) == MM_OK && v32 == 96, "in range: %d", v32);
    EXPECT(mm_json_i32_in(j, "range.json", "absent", 7, 1, 100, &v32) == MM_OK && v32 == 7, "default: %d", v32);
    EXPECT(mm_json_i32_in(j, "range.json", "null", 7, 1, 100, &v32) == MM_OK && v32 == 7, "null: %d", v32);
    EXPECT_ERR(mm_json_i32_in(j, "range.json", "absent", 0, 1, 100, &v32), MM_ERR_FORMAT, "'absent'", "missing");
    EXPECT_ERR(mm_json_int_in(j, "range.json", "f", 0, 0, 10, &v), MM_ERR_FORMAT, "'f'", "0.5");
    EXPECT(mm_json_num_in(j, "range.json", "f", 0, 0, 1, 1, &d) == MM_OK && d == 0.5, "number in (0, 1]");
    EXPECT_ERR(mm_json_num_in(j, "range.json", "zero", 1, 0, 1, 1, &d), MM_ERR_FORMAT, "'zero'", "(0, 1]");
    EXPECT(mm_json_num_in(j, "range.json", "zero", 1, 0, 1, 0, &d) == MM_OK && d == 0, "0 in [0, 1]");
    EXPECT_ERR(mm_json_num_in(j, "range.json", "s", 1, 0, 1, 0, &d), MM_ERR_FORMAT, "'s'", "\"x\\u0001y\"");
    mm_json_free(j);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_getters();
    test_load_errors();
    test_ranges();
    const char *files[] = {"config.json", "gen.json", "bad.json", "dup.json", "empty.json", "range.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[600];
        snprintf(path, sizeof path, "%s/%s", tmp_dir, files[i]);
        unlink(path);
    }
    rmdir(tmp_dir);
    return mm_test_finish("test_config");
}
