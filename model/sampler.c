/* See sampler.h. */
#include "sampler.h"

#include <math.h>

mm_status mm_sampler_init(mm_sampler *s, float temperature, float top_p, int32_t top_k, uint64_t seed) {
    if (!(temperature >= 0.0f) || !isfinite(temperature))
        return MM_ERROR(MM_ERR_INVALID, "temperature must be >= 0 (got %g)", temperature);
    if (!(top_p > 0.0f && top_p <= 1.0f))
        return MM_ERROR(MM_ERR_INVALID, "top_p must be in (0, 1] (got %g)", top_p);
    if (top_k < 0) return MM_ERROR(MM_ERR_INVALID, "top_k must be >= 0 (got %d)", top_k);
    s->params = (mm_sampling){temperature, top_p, top_k};
    s->rng = mm_rng_seed(seed);
    return MM_OK;
}

mm_status mm_sampler_pick(mm_sampler *s, mm_backend *be, const float *logits, int32_t vocab, int32_t *id) {
    return be->ops->sample(be, logits, 1, vocab, &s->params, &s->rng, id);
}
