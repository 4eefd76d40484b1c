/* Element types of tensors on disk and in memory, with scalar conversions.
 * bf16 is the top half of an IEEE f32 (round-to-nearest-even on the way down);
 * f16 is IEEE half. Bulk conversions live in kernels/. */
#ifndef MM_DTYPE_H
#define MM_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    MM_DTYPE_F32 = 0,
    MM_DTYPE_F16,
    MM_DTYPE_BF16,
    MM_DTYPE_I64,
    MM_DTYPE_I32,
    MM_DTYPE_I16,
    MM_DTYPE_I8,
    MM_DTYPE_U8,
    MM_DTYPE_BOOL,
    MM_DTYPE_F64,
    MM_DTYPE_COUNT
} mm_dtype;

size_t mm_dtype_size(mm_dtype t);
const char *mm_dtype_name(mm_dtype t); /* safetensors spelling: "F32", "BF16", ... */
/* Parses a safetensors dtype string; returns 0 on success. */
int mm_dtype_parse(const char *s, mm_dtype *out);
int mm_dtype_is_float(mm_dtype t);     /* F32, F16 or BF16 */

static inline float mm_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t mm_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mm_f16_to_f32(uint16_t h);
uint16_t mm_f32_to_f16(float f);

#endif
