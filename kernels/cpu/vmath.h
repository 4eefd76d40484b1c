/* Branch-free scalar math for the fast CPU ops' elementwise loops: written so that GCC
 * vectorises a loop calling them (inside an MM_VEC_CLONES function, one copy per ISA),
 * where libm's expf/tanhf/erff stay scalar calls (tanhf alone was a third of a SigLIP
 * forward). Each value's result depends on that value only, never on its neighbours or
 * where a loop ends. The reference backend keeps libm (ops_ref.c). */
#ifndef MM_CPU_VMATH_H
#define MM_CPU_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MM_VMATH_INLINE static inline __attribute__((always_inline))

/* e^x for x in [-87, 88] (clamped outside) within 2 ulp: x = n ln2 + r, |r| <= ln2/2, e^r
 * by the Cephes expf polynomial, 2^n built in the exponent bits. */
MM_VMATH_INLINE float exp_poly(float x) {
    x = x < -87.0f ? -87.0f : x; /* comparisons, not fminf/fmaxf: those stay libm calls */
    x = x > 88.0f ? 88.0f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer (floorf would be a call) */
    float n = (x * 1.44269504088896341f + magic) - magic;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* v * sigmoid(v). */
MM_VMATH_INLINE float silu_poly(float v) { return v / (1.0f + exp_poly(-v)); }

/* GELU, tanh approximation: 0.5 v (1 + tanh(u)) with u = sqrt(2/pi) (v + 0.044715 v^3),
 * computed as v * sigmoid(2u) (the same function: 1 + tanh(u) = 2 sigmoid(2u)), which
 * has no cancellation near tanh(u) = -1. */
MM_VMATH_INLINE float gelu_tanh_poly(float v) {
    float two_u = 1.5957691216057308f * v * (1.0f + 0.044715f * v * v);
    return v / (1.0f + exp_poly(-two_u));
}

/* GELU, exact: v Phi(v), Phi(v) = erfc(-v / sqrt 2) / 2. erfc(z) for z >= 0 by the
 * Chebyshev-fitted form t exp(-z^2 + P(t)), t = 1 / (1 + z/2), relative error below
 * 1.2e-7 everywhere (Numerical Recipes' erfcc), so Phi keeps its relative accuracy in
 * the negative tail, where 1 + erf would cancel. */
MM_VMATH_INLINE float gelu_erf_poly(float v) {
    float z = fabsf(v) * 0.7071067811865476f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float half_erfc = 0.5f * t * exp_poly(p - z * z); /* Phi(-|v|) */
    return v * (v >= 0.0f ? 1.0f - half_erfc : half_erfc);
}

#endif
