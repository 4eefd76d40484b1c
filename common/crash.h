/* A last word from a crashing process: on SIGSEGV, SIGBUS, SIGFPE, SIGILL or SIGABRT,
 * writes the signal and a raw backtrace (module + offset per frame, which addr2line
 * turns into file:line with the same binary) to stderr, then lets the signal kill the
 * process as usual. For tests and benchmarks run where no debugger is at hand (the
 * GPU machine), and for long-running services whose logs are all that is left. */
#ifndef MM_CRASH_H
#define MM_CRASH_H

/* Installs the handlers once; later calls do nothing. */
void mm_crash_trace_install(void);

#endif
