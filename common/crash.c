/* Backtrace on fatal signals: see crash.h. Only async-signal-safe calls in the handler
 * (write, backtrace_symbols_fd; backtrace itself is primed at install time so that
 * libgcc is already loaded when a crash happens). */
#include "common/crash.h"

#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void write_str(const char *s) {
    ssize_t n = write(STDERR_FILENO, s, strlen(s));
    (void)n;
}

static const char *signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    default: return "signal";
    }
}

static void on_fatal(int sig) {
    void *frames[64];
    write_str("\n*** fatal ");
    write_str(signal_name(sig));
    write_str("; backtrace (addr2line -e BINARY -f -C OFFSET):\n");
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
    raise(sig); /* SA_RESETHAND restored the default action: the process ends as it would have */
}

void mm_crash_trace_install(void) {
    static int installed;
    if (installed) return;
    installed = 1;
    void *prime[1];
    backtrace(prime, 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
}
