/* The q8 weight format (Q8_0-style, as GGUF's Q8_0): a linear weight W [N, K] of an
 * HF checkpoint stored as two safetensors tensors, NAME.weight I8 [N, K] and
 * NAME.weight_scale F16 [N, K/32]: W[n, k] ~= weight[n, k] * weight_scale[n, k/32],
 * one symmetric scale per block of 32 consecutive input values (d = max|w| / 127,
 * q = round(w / d)). config.json declares it: "quantization_config": {"quant_method":
 * "mm_q8_0", "bits": 8, "block_size": 32, "scale_dtype": "float16"}. F16 scales: the
 * bytes of GGUF Q8_0 (34 per 32 weights, 6% less to stream than f32 scales in a
 * bandwidth-bound decode), so a conversion to Q8_0 is a repack and accuracy comparisons
 * with llama.cpp use the same numbers. Here: the constants and the scalar quantizers
 * the tools (weights) and the kernels (activations) share. Pure functions, no I/O. */
#ifndef MM_Q8_H
#define MM_Q8_H

#include <stdint.h>

#define MM_Q8_BLOCK 32                     /* values per scale, along the input dim K */
#define MM_Q8_SCALE_SUFFIX "_scale"        /* NAME.weight -> NAME.weight_scale */
#define MM_Q8_METHOD "mm_q8_0"             /* quantization_config.quant_method */

/* One weight row x[K] (K % 32 == 0) to q[K] and f16 scales d[K/32] (Q8_0's rounding:
 * d = amax/127, q = roundf(x * (1/d)), d stored as f16). Returns the number of blocks
 * whose scale overflowed f16 (those are clamped: the row should not be stored). */
int64_t mm_q8_quantize_row(const float *x, int64_t K, int8_t *q, uint16_t *d);

/* One activation row x[K] (K % 32 == 0) to q[K] and f32 scales d[K/32] (d = amax/127,
 * q = nearest-even(x * 127/amax)); used identically by the reference and fast
 * kernels, so both see the same integers. */
void mm_q8_quantize_act(const float *x, int64_t K, int8_t *q, float *d);

#endif
