/* See clock.h. */
#include "clock.h"

#include <time.h>

double mm_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

double mm_now_s(void) { return mm_now_ms() * 1e-3; }
