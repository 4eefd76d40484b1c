/* See trace.h. */
#include "trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

struct mm_trace {
    FILE *f;
    double t0_ms, t_flushed_ms;
};

mm_status mm_trace_open(const char *path, mm_trace **out) {
    *out = NULL;
    if (!path || !path[0]) return MM_OK;
    mm_trace *t = calloc(1, sizeof *t);
    CHECK(CHECK_ALLOC(t));
    t->f = fopen(path, "w");
    if (!t->f) {
        free(t);
        return MM_ERROR(MM_ERR_IO, "trace_file \"%s\": %s", path, strerror(errno));
    }
    t->t0_ms = t->t_flushed_ms = mm_now_ms();
    *out = t;
    return MM_OK;
}

static double stamp(mm_trace *t) {
    double now = mm_now_ms();
    if (now - t->t_flushed_ms > 1000) {
        fflush(t->f);
        t->t_flushed_ms = now;
    }
    return now - t->t0_ms;
}

void mm_trace_request(mm_trace *t, const char *ev, uint64_t call_id) {
    if (!t) return;
    double now = stamp(t);
    fprintf(t->f, "{\"t\":%.3f,\"ev\":\"%s\",\"req\":%llu}\n", now, ev, (unsigned long long)call_id);
}

void mm_trace_step(mm_trace *t, uint64_t step_id, double t_sent_ms, double busy_ms, int n_seqs, int n_rows,
                   int n_decodes) {
    if (!t) return;
    double now = stamp(t);
    fprintf(t->f, "{\"t\":%.3f,\"ev\":\"step\",\"id\":%llu,\"sent\":%.3f,\"busy\":%.3f,\"seqs\":%d,\"rows\":%d,\"decodes\":%d}\n",
            now, (unsigned long long)step_id, t_sent_ms - t->t0_ms, busy_ms, n_seqs, n_rows, n_decodes);
}

void mm_trace_close(mm_trace *t) {
    if (!t) return;
    fclose(t->f);
    free(t);
}
