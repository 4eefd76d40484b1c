/* Process start-up that must happen before any library initialises itself, and the
 * process facts a supervisor relies on (its name, its death with its parent, the exit
 * status of a permanent error).
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

/* Exit status of a permanent error: the config or the model files are wrong, so a
 * restart cannot help (sysexits.h EX_CONFIG; deploy/launch.sh and the systemd unit stop
 * on it instead of restarting). */
#define MM_EXIT_CONFIG 78

/* When neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set, sets GOMP_SPINCOUNT=2000 and
 * re-executes the program with the same arguments (so the runtime sees it); otherwise
 * returns at once, respecting the user's choice (PASSIVE for heavily shared machines,
 * ACTIVE for dedicated ones). The re-exec goes through the binary's real path, not
 * /proc/self/exe, so ps, top and ss show the program's name. Returns only if no
 * re-exec happened (a failure is logged).
 * Under a supervisor (MM_SUPERVISED set in the environment, as deploy/launch.sh does),
 * also asks for SIGTERM when the parent dies, so no worker outlives its supervisor. */
void mm_runtime_init(char **argv);

/* Asks the kernel for sig when the parent process dies (PR_SET_PDEATHSIG; kept across
 * exec). MPI ranks call it with SIGKILL: without their process manager they are
 * orphans that nothing stops. */
void mm_runtime_die_with_parent(int sig);

#endif
