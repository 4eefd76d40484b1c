/* A timeline of the scheduler thread, for finding where a request's latency goes (issue
 * 22: the service's own overhead per token; issue 17: time to first token under load):
 * one JSON object per line, times in ms since the trace was opened.
 *   {"t":..,"ev":"arrive","req":ID}         the request reached the scheduler thread
 *   {"t":..,"ev":"encoded","req":ID}        its images came back from the encoder pool
 *   {"t":..,"ev":"admitted","req":ID}       it entered the scheduler's queue
 *   {"t":..,"ev":"scheduled","req":ID}      its first rows went into a step
 *   {"t":..,"ev":"first","req":ID}          its first token came back
 *   {"t":..,"ev":"done","req":ID}           its final reply went out
 *   {"t":..,"ev":"step","id":N,"sent":T,"busy":MS,"seqs":S,"rows":R,"decodes":D}
 *                                          a step's result came back (t); sent at T; busy:
 *                                          the last stage's compute time for it
 * Written by the scheduler thread only, through stdio's buffer (flushed once a second
 * and at close), so tracing costs a formatted line per event. */
#ifndef MM_COORD_TRACE_H
#define MM_COORD_TRACE_H

#include <stdint.h>

#include "common/status.h"

typedef struct mm_trace mm_trace;

/* Opens (truncates) path; *out NULL for "" (tracing off). */
mm_status mm_trace_open(const char *path, mm_trace **out);
/* Every call below is a no-op on NULL. */
void mm_trace_request(mm_trace *t, const char *ev, uint64_t call_id);
void mm_trace_step(mm_trace *t, uint64_t step_id, double t_sent_ms, double busy_ms, int n_seqs, int n_rows,
                   int n_decodes);
void mm_trace_close(mm_trace *t);

#endif
