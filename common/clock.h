/* The monotonic clock that every process measures intervals, timeouts and deadlines
 * with (never the wall clock, which may jump). Log timestamps use the wall clock
 * (log.c); nothing else should. */
#ifndef MM_CLOCK_H
#define MM_CLOCK_H

/* CLOCK_MONOTONIC in milliseconds / in seconds. */
double mm_now_ms(void);
double mm_now_s(void);

#endif
