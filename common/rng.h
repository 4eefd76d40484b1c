/* The one pseudo-random generator: xorshift64* seeded through splitmix64. Token sampling
 * (one state per sequence), the diffusion noise (mm_noise_normal), the random weights of
 * mm-mkmodel and the benchmarks, and mmctl's retry jitter all draw from it, so a seed
 * means the same numbers on every machine and backend. Not for anything secret. */
#ifndef MM_RNG_H
#define MM_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A state from any seed (splitmix64; never 0). */
uint64_t mm_rng_seed(uint64_t seed);
/* The next 64 bits (xorshift64*); the state must not be 0. */
uint64_t mm_rng_next(uint64_t *state);
/* Uniform in [0, 1) with 24 bits: the top 24 bits of mm_rng_next. */
float mm_rng_uniform(uint64_t *state);

#ifdef __cplusplus
}
#endif

#endif
