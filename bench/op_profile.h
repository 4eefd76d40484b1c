/* Where a backend's time goes, op by op: the op table is swapped for wrappers that wait
 * for the device before and after each op (mm_backend_cuda_sync; nothing to wait for on
 * the CPU), so each op's time is its own, launch included, without overlap. Their sum
 * against the same step run unwrapped shows what the gaps between ops cost. Benchmarks
 * only: one profile at a time (the wrappers find it in a static). */
#ifndef MM_BENCH_OP_PROFILE_H
#define MM_BENCH_OP_PROFILE_H

#include <stddef.h>

#include "kernels/backend.h"

/* Wraps be's ops until mm_op_profile_end; counts start at zero. */
void mm_op_profile_begin(mm_backend *be);
void mm_op_profile_end(mm_backend *be);
/* {"matmul": ms, "attention": ms, ..., "all_ops": ms, "calls": n} with every figure
 * divided by `per` (e.g. the number of steps), into buf; the length written. */
int mm_op_profile_json(double per, char *buf, size_t n);

#endif
