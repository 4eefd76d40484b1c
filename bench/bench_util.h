/* Small helpers every benchmark shares: the median of repeats (benchmarks report
 * medians, never single runs) and, through common/clock.h, the monotonic clock. */
#ifndef MM_BENCH_UTIL_H
#define MM_BENCH_UTIL_H

#include "common/clock.h" /* mm_now_s */

/* Median of v[0..n) (sorts v in place). */
double mm_bench_median(double *v, int n);

#endif
