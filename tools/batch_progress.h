/* The progress line of mmctl batch on stderr: done / failed / total, rate and ETA.
 * On a terminal it is redrawn in place (at most 10 times a second); otherwise (a log
 * file, CI) one line is printed every few seconds. Only formats and prints: the
 * caller owns the counters and their locking. */
#ifndef MM_BATCH_PROGRESS_H
#define MM_BATCH_PROGRESS_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    FILE *out;
    int tty;
    size_t total;     /* lines of the input */
    size_t skipped;   /* already ok in an earlier run of the job */
    size_t ok, failed;/* finished in this run */
    double t_start, t_last;
} batch_progress;

void batch_progress_init(batch_progress *p, FILE *out, size_t total, size_t skipped);
/* Prints when the last print is old enough; force: print now (the final state). */
void batch_progress_draw(batch_progress *p, int force);
/* Seconds since batch_progress_init. */
double batch_progress_elapsed(const batch_progress *p);

#endif
