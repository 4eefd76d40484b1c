/* Process start-up that must happen before any library initialises itself.
 * libgomp (the OpenMP runtime under oneDNN and our CPU kernels) reads its wait policy
 * once, when it is loaded. Its default spins ~300000 times at every barrier, so when
 * cores are shared (a coordinator beside its stages, tests in parallel, other tenants)
 * a waiting thread steals the core its peer needs and a decode step gets 10-40x slower.
 * Fully passive waiting costs 2x on an idle machine instead. Measured (110m bf16,
 * 2 threads, decode tokens/s, idle / one core busy elsewhere): default spin 278 / 6.8,
 * passive 122 / 122, GOMP_SPINCOUNT=2000 270 / 65. Programs that compute call
 * mm_runtime_init first thing in main() to get the bounded spin. */
#ifndef MM_RUNTIME_H
#define MM_RUNTIME_H

/* When neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set, sets GOMP_SPINCOUNT=2000 and
 * re-executes the program with the same arguments (so the runtime sees it); otherwise
 * returns at once, respecting the user's choice (PASSIVE for heavily shared machines,
 * ACTIVE for dedicated ones). Returns only if no re-exec happened (a failure is logged). */
void mm_runtime_init(char **argv);

#endif
