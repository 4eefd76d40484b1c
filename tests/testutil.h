/* Minimal test harness: EXPECT-style checks that count failures, and a closing line
 * "N passed, N failed" per test program. Also golden-file path helpers. */
#ifndef MM_TESTUTIL_H
#define MM_TESTUTIL_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/status.h"

extern int mm_test_passed, mm_test_failed;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (cond) {                                                                                \
            mm_test_passed++;                                                                      \
        } else {                                                                                   \
            mm_test_failed++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

/* Does s contain needle? (A NULL needle: yes.) */
int mm_test_has(const char *s, const char *needle);

/* The status and message of a failed call: code, and the message names both strings
 * (either may be NULL). */
#define EXPECT_ERR(rc_expr, code, name1, name2)                                                    \
    do {                                                                                           \
        mm_status rc_ = (rc_expr);                                                                 \
        const char *msg_ = mm_error_last();                                                        \
        EXPECT(rc_ == (code) && mm_test_has(msg_, name1) && mm_test_has(msg_, name2),              \
               "got %s, want %s; message: %s", mm_status_str(rc_), mm_status_str(code), msg_);     \
    } while (0)

/* Prints the summary and returns the process exit code (0 when nothing failed). */
int mm_test_finish(const char *name);
/* Returns "$MM_GOLDEN_DIR/rel" (or "$MM_ASSETS_DIR/rel" for mm_asset_path) in a static
 * rotating buffer; the env vars are set by ctest. */
const char *mm_golden_path(const char *rel);
const char *mm_asset_path(const char *rel);
/* Normalised MSE sum (a-ref)^2 / sum ref^2, in double; +inf on any non-finite value
 * (op tests in the manner of llama.cpp's test-backend-ops). */
double mm_nmse(const float *a, const float *ref, int64_t n);
/* [B, C, hw] (the references' NCHW) -> [B, hw, C] (our channels-last) when to_nhwc,
 * else back. */
void mm_test_transpose_bc(const float *x, float *y, int64_t B, int64_t C, int64_t hw, int to_nhwc);
/* Runs argv[0] with argv (no shell) and returns its whole stdout (malloc'd), or NULL
 * when it could not run or exited non-zero (the status goes to stderr). */
char *mm_test_run_capture(char *const argv[]);
/* Does the JSON array of integers `want` equal got[0..n)? */
int mm_test_ids_equal(const json_t *want, const int32_t *got, size_t n);
/* A whole file, malloc'd with a NUL after its *len bytes (so text can be used as a
 * string); len may be NULL. NULL when it cannot be read. */
char *mm_test_read_file(const char *path, size_t *len);
/* A model root in a new temporary directory (path in out): assets/tiny's llm/ with its
 * files linked but config.json, copied with mm_vision_select_layer = select_layer, and
 * vision_dir linked as vision/ (no decoder). 0 on success; the caller removes it. */
int mm_test_model_root(const char *vision_dir, int select_layer, char *out, size_t cap);
/* Max |a-b| over n floats. */
float mm_max_abs_diff(const float *a, const float *b, size_t n);

#endif
