/* See serve_stats.h. */
#include "serve_stats.h"

#include <stdlib.h>

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double serve_quantile(const double *sorted, int n, double q) {
    if (n <= 0) return 0;
    double pos = q * (n - 1);
    int lo = (int)pos;
    if (lo >= n - 1) return sorted[n - 1];
    return sorted[lo] + (pos - lo) * (sorted[lo + 1] - sorted[lo]);
}

serve_summary serve_summarise(double *v, int n) {
    serve_summary s = {n > 0 ? n : 0, 0, 0, 0, 0};
    if (n <= 0) return s;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    for (int i = 0; i < n; i++) s.mean += v[i];
    s.mean /= n;
    s.p50 = serve_quantile(v, n, 0.50), s.p90 = serve_quantile(v, n, 0.90), s.p99 = serve_quantile(v, n, 0.99);
    return s;
}
