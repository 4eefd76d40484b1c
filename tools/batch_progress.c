/* See batch_progress.h. The rate counts only lines finished in this run, so a resumed
 * job's ETA is not flattered by the lines it skipped. */
#include "batch_progress.h"

#include <time.h>
#include <unistd.h>

#include "common/clock.h"

#define TTY_PERIOD_S 0.1
#define LOG_PERIOD_S 5.0
#define BAR_WIDTH 24

void batch_progress_init(batch_progress *p, FILE *out, size_t total, size_t skipped) {
    *p = (batch_progress){.out = out, .tty = isatty(fileno(out)), .total = total, .skipped = skipped};
    p->t_start = p->t_last = mm_now_s();
}

double batch_progress_elapsed(const batch_progress *p) { return mm_now_s() - p->t_start; }

/* "1h02m", "3m05s", "42s" */
static void format_duration(char *buf, size_t cap, double s) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

void batch_progress_draw(batch_progress *p, int force) {
    double now = mm_now_s();
    if (!force && now - p->t_last < (p->tty ? TTY_PERIOD_S : LOG_PERIOD_S)) return;
    p->t_last = now;
    size_t finished = p->skipped + p->ok + p->failed, run = p->ok + p->failed;
    double elapsed = now - p->t_start, rate = elapsed > 0 ? (double)run / elapsed : 0;
    char eta[32] = "?";
    if (finished >= p->total) snprintf(eta, sizeof eta, "0s");
    else if (rate > 0) format_duration(eta, sizeof eta, (double)(p->total - finished) / rate);
    char bar[BAR_WIDTH + 1];
    size_t fill = p->total ? finished * BAR_WIDTH / p->total : BAR_WIDTH;
    for (size_t i = 0; i < BAR_WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[BAR_WIDTH] = 0;
    fprintf(p->out, "%s[%s] %zu/%zu done, %zu failed, %.1f lines/s, ETA %s%s", p->tty ? "\r" : "", bar, finished,
            p->total, p->failed, rate, eta, p->tty ? "\033[K" : "\n");
    fflush(p->out);
}
