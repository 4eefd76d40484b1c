/* Process start-up that must happen before any library initialises itself.
 * libgomp (the OpenMP runtime under oneDNN and our CPU kernels) reads OMP_WAIT_POLICY
 * once, when it is loaded. Its default spins at every barrier, so on a machine whose
 * cores are shared (a coordinator beside its stages, tests in parallel, other tenants)
 * a waiting thread steals the core its peer needs and a decode step gets 10-100x
 * slower (measured: 110m bf16, 2 threads, busy machine: 6.6 tokens/s spinning vs 140
 * passive). Programs that compute call mm_runtime_init first thing in main(). */
#ifndef MM_RUNTIME_H
#define MM_RUNTIME_H

/* When OMP_WAIT_POLICY is unset, sets it to PASSIVE and re-executes the program with the
 * same arguments (so the runtime sees it); otherwise returns at once. A user's explicit
 * OMP_WAIT_POLICY (e.g. ACTIVE on a dedicated machine) is respected. Returns only if no
 * re-exec happened (including when it failed, which is logged). */
void mm_runtime_init(char **argv);

#endif
