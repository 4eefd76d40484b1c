/* See rng.h. The constants are splitmix64's and xorshift64*'s (Vigna). */
#include "rng.h"

uint64_t mm_rng_seed(uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z ? z : 0x2545F4914F6CDD1Dull;
}

uint64_t mm_rng_next(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

float mm_rng_uniform(uint64_t *state) { return (float)(mm_rng_next(state) >> 40) / 16777216.0f; }
