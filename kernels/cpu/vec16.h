/* 16-lane f32 vectors (GCC vector extensions) and the few vector helpers the fast CPU
 * kernels share: on an x86-64-v4 clone a v16 is one AVX-512 register, on v3 two AVX2
 * ones. Helpers are always_inline so each target_clones ISA gets its own code, and take
 * vectors by pointer (a by-value 64-byte vector would draw -Wpsabi notes). Every lane
 * runs the same arithmetic, so a value's bits never depend on its lane or neighbours. */
#ifndef MM_CPU_VEC16_H
#define MM_CPU_VEC16_H

#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));

#define MM_V16_INLINE static inline __attribute__((always_inline))
/* Callers of the helpers: one clone per ISA level, picked at load time. */
#define MM_VEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

MM_V16_INLINE void vmax_into(v16 *a, const v16 *b) {
    v16i gt = *b > *a;
    *a = (v16)((gt & (v16i)*b) | (~gt & (v16i)*a));
}

/* x = 2^x for x <= 0 (x below -125 gives 2^-125, nothing relies on smaller): x = n + f,
 * f in [-1/2, 1/2], 2^f by Cephes' exp2f polynomial (rel. error ~2e-7), n into the exponent. */
MM_V16_INLINE void exp2_neg(v16 *x) {
    const v16 lo = (v16){0} - 125.0f, magic = (v16){0} + 12582912.0f; /* 1.5 * 2^23: rounds to an integer */
    v16i small = *x < lo;
    v16 y = (v16)((small & (v16i)lo) | (~small & (v16i)*x));
    v16 t = y + magic, n = t - magic, f = y - n;
    v16 p = (v16){0} + 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    *x = (v16)((v16i)p + (((v16i)t - (v16i)magic) << 23));
}

/* out = the first n (<= 16) values of an f32 (bf16 = 0) or bf16 (bf16 = 1) array at p,
 * widened to f32 (exactly), lanes n..15 zero. */
MM_V16_INLINE void v16_load(const void *p, int bf16, int32_t n, v16 *out) {
    if (n == 16 && bf16) {
        v16h h;
        memcpy(&h, p, sizeof h);
        *out = (v16)(__builtin_convertvector(h, v16u) << 16);
    } else if (n == 16) {
        memcpy(out, p, sizeof *out);
    } else {
        v16 v = {0};
        for (int32_t i = 0; i < n; i++) {
            uint32_t u = bf16 ? (uint32_t)((const uint16_t *)p)[i] << 16 : 0;
            float f;
            if (bf16) memcpy(&f, &u, 4);
            else f = ((const float *)p)[i];
            v[i] = f;
        }
        *out = v;
    }
}

/* The first n (<= 16) lanes of v to p. */
MM_V16_INLINE void v16_store(float *p, int32_t n, const v16 *v) {
    if (n == 16) memcpy(p, v, sizeof *v);
    else
        for (int32_t i = 0; i < n; i++) p[i] = (*v)[i];
}

/* out[t] = the sum of the 16 lanes of a[t], t < 16, by a fixed tree (a is clobbered):
 * each level adds the low and high halves of every vector's partial sums while packing
 * two vectors into one, so 15 adds and 30 two-source shuffles do all sixteen sums. */
MM_V16_INLINE void v16_sum16(v16 a[16], v16 *out) {
    const v16i lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const v16i lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const v16i lo2 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const v16i lo1 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) a[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], lo8) + __builtin_shuffle(a[2 * i], a[2 * i + 1], lo8 + 8);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) a[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], lo4) + __builtin_shuffle(a[2 * i], a[2 * i + 1], lo4 + 4);
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) a[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], lo2) + __builtin_shuffle(a[2 * i], a[2 * i + 1], lo2 + 2);
    *out = __builtin_shuffle(a[0], a[1], lo1) + __builtin_shuffle(a[0], a[1], lo1 + 1);
}

/* The sum of the 16 lanes of *v, in a fixed order. */
MM_V16_INLINE float v16_hsum(const v16 *v) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += (*v)[i];
    return s;
}

#endif
