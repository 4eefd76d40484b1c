/* Small helpers every benchmark shares: a monotonic clock and the median of repeats
 * (benchmarks report medians, never single runs). */
#ifndef MM_BENCH_UTIL_H
#define MM_BENCH_UTIL_H

/* Seconds on the monotonic clock. */
double mm_bench_now(void);
/* Median of v[0..n) (sorts v in place). */
double mm_bench_median(double *v, int n);

#endif
