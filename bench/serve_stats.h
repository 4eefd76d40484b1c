/* Latency summaries for bench/serve: mean and percentiles (linear interpolation between
 * order statistics, as numpy's default, so p50 is the median) of a sample in ms. */
#ifndef MM_BENCH_SERVE_STATS_H
#define MM_BENCH_SERVE_STATS_H

typedef struct {
    int n;
    double mean, p50, p90, p99;
} serve_summary;

/* Summarises v[0..n) (sorts v in place); all zero when n == 0. */
serve_summary serve_summarise(double *v, int n);
/* The q-quantile (0..1) of the sorted v[0..n); 0 when n == 0. */
double serve_quantile(const double *sorted, int n, double q);

#endif
