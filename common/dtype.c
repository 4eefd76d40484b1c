/* dtype names, sizes and the scalar IEEE half conversions; see dtype.h. */
#include "dtype.h"

static const struct {
    const char *name;
    size_t size;
} dtype_info[MM_DTYPE_COUNT] = {
    [MM_DTYPE_F32] = {"F32", 4}, [MM_DTYPE_F16] = {"F16", 2}, [MM_DTYPE_BF16] = {"BF16", 2},
    [MM_DTYPE_I64] = {"I64", 8}, [MM_DTYPE_I32] = {"I32", 4}, [MM_DTYPE_I16] = {"I16", 2},
    [MM_DTYPE_I8] = {"I8", 1},   [MM_DTYPE_U8] = {"U8", 1},   [MM_DTYPE_BOOL] = {"BOOL", 1},
    [MM_DTYPE_F64] = {"F64", 8},
};

size_t mm_dtype_size(mm_dtype t) { return (unsigned)t < MM_DTYPE_COUNT ? dtype_info[t].size : 0; }

const char *mm_dtype_name(mm_dtype t) {
    return (unsigned)t < MM_DTYPE_COUNT ? dtype_info[t].name : "?";
}

int mm_dtype_parse(const char *s, mm_dtype *out) {
    for (int i = 0; i < MM_DTYPE_COUNT; i++) {
        if (!strcmp(s, dtype_info[i].name)) {
            *out = (mm_dtype)i;
            return 0;
        }
    }
    return -1;
}

int mm_dtype_is_float(mm_dtype t) {
    return t == MM_DTYPE_F32 || t == MM_DTYPE_F16 || t == MM_DTYPE_BF16;
}

float mm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400u)) {
                mant <<= 1;
                exp--;
            }
            mant &= 0x3ffu;
            u = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t mm_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    int32_t exp = (int32_t)((u >> 23) & 0xffu) - 127 + 15;
    uint32_t mant = u & 0x7fffffu;
    if (((u >> 23) & 0xffu) == 0xffu) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) half++;
    return (uint16_t)half;
}
