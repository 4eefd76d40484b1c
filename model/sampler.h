/* Per-sequence token sampler: validated sampling parameters plus the sequence's own
 * seeded generator, so a request's output depends only on its seed, never on which
 * other requests shared its batch. The arithmetic is the backend's sample op. */
#ifndef MM_SAMPLER_H
#define MM_SAMPLER_H

#include <stdint.h>

#include "kernels/backend.h"

typedef struct {
    mm_sampling params;
    uint64_t rng;
} mm_sampler;

/* temperature >= 0 (0 = greedy), 0 < top_p <= 1, top_k >= 0 (0 = off); else MM_ERR_INVALID. */
mm_status mm_sampler_init(mm_sampler *s, float temperature, float top_p, int32_t top_k, uint64_t seed);
/* Picks the next id from logits[vocab] (backend memory; host memory for CPU backends). */
mm_status mm_sampler_pick(mm_sampler *s, mm_backend *be, const float *logits, int32_t vocab, int32_t *id);

#endif
