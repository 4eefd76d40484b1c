/* Scalar quantizers of the q8 format (see q8.h). No I/O, no allocation. */
#include "q8.h"

#include <math.h>

#include "dtype.h"

int64_t mm_q8_quantize_row(const float *x, int64_t K, int8_t *q, uint16_t *d) {
    int64_t overflow = 0;
    for (int64_t b = 0; b < K / MM_Q8_BLOCK; b++) {
        const float *xb = x + b * MM_Q8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < MM_Q8_BLOCK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float dv = amax / 127.0f, id = dv != 0.0f ? 1.0f / dv : 0.0f;
        if (dv > 65504.0f) overflow++, dv = 65504.0f;
        for (int i = 0; i < MM_Q8_BLOCK; i++) q[b * MM_Q8_BLOCK + i] = (int8_t)roundf(xb[i] * id);
        d[b] = mm_f32_to_f16(dv);
    }
    return overflow;
}

void mm_q8_quantize_act(const float *x, int64_t K, int8_t *q, float *d) {
    for (int64_t b = 0; b < K / MM_Q8_BLOCK; b++) {
        const float *xb = x + b * MM_Q8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < MM_Q8_BLOCK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int i = 0; i < MM_Q8_BLOCK; i++) q[b * MM_Q8_BLOCK + i] = (int8_t)nearbyintf(xb[i] * id);
        d[b] = amax / 127.0f;
    }
}
