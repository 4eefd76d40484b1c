/* See testutil.h. */
#include "testutil.h"

#include <math.h>
#include <string.h>

int mm_test_passed, mm_test_failed;

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

double mm_nmse(const float *a, const float *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(ref[i])) return INFINITY;
        num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}
