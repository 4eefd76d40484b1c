/* Internal to kernels/cpu: the reference and fast implementations of each op, with
 * the signatures of mm_backend_ops. The reference ops are plain single-threaded loops
 * (the truth); the fast ops use oneDNN GEMM, OpenMP over independent outputs and
 * vector loops, and must give bit-identical rows whatever M or the thread count. */
#ifndef MM_CPU_OPS_H
#define MM_CPU_OPS_H

#include <math.h>

#include "kernels/backend.h"

/* Element i of a float tensor of any float dtype, as f32. */
float mm_cpu_load_elem(mm_dtype dt, const void *data, int64_t i);
/* Row r of a [rows, cols] float tensor converted to f32 into out[cols]. */
void mm_cpu_load_row(mm_dtype dt, const void *data, int64_t r, int64_t cols, float *out);

/* GELU of one value: exact (x * Phi(x), erf) or the tanh approximation. */
static inline float mm_gelu_scalar(float v, int tanh_approx) {
    return tanh_approx ? 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)))
                       : 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
}

/* b[i] = x[i] rounded to bf16, bit-identical to mm_f32_to_bf16 (nearest even, NaN kept
 * quiet) but branch-free, so it vectorises (gemm_dnnl.c). */
void mm_cpu_round_bf16(const float *x, uint16_t *b, size_t n);

/* shared by both CPU backends (host memory) */
void *mm_cpu_alloc(mm_backend *be, size_t bytes);
void mm_cpu_dealloc(mm_backend *be, void *p);
mm_status mm_cpu_copy(mm_backend *be, void *dst, const void *src, size_t bytes);
mm_status mm_cpu_kv_store(mm_backend *be, void *k_cache, void *v_cache, const float *k, const float *v,
                          const int32_t *slots, int64_t M, const mm_attn_shape *shape);
/* Start of (key j, kv head h) in a [n_blocks, n_kv_heads, block_size, head_dim] cache. */
static inline int64_t mm_kv_offset(const int32_t *block_table, int32_t j, int32_t h, const mm_attn_shape *s) {
    return (((int64_t)block_table[j / s->block_size] * s->n_kv_heads + h) * s->block_size + j % s->block_size) *
           s->head_dim;
}
mm_status mm_cpu_sample(mm_backend *be, const float *logits, int64_t M, int64_t V, const mm_sampling *params,
                        uint64_t *rng, int32_t *out);

#define MM_CPU_DECLARE_OPS(prefix)                                                                 \
    mm_status prefix##_embed(mm_backend *be, const mm_tensor *table, const int32_t *ids, int64_t M, float *y); \
    mm_status prefix##_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M); \
    mm_status prefix##_rmsnorm(mm_backend *be, const float *x, const float *w, float *y, int64_t M,   \
                               int64_t D, float eps);                                              \
    mm_status prefix##_rope(mm_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t M, \
                            int32_t n_heads, int32_t head_dim);                                    \
    mm_status prefix##_attention(mm_backend *be, const float *q, const void *k_cache, const void *v_cache, \
                                 const mm_attn_row *rows, int64_t M, const mm_attn_shape *shape, float *out); \
    mm_status prefix##_silu_mul(mm_backend *be, float *gate, const float *up, int64_t n);          \
    mm_status prefix##_add(mm_backend *be, float *y, const float *x, int64_t n);                   \
    mm_status prefix##_softmax(mm_backend *be, const float *x, float *y, int64_t M, int64_t N);       \
    mm_status prefix##_layernorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, \
                                 int64_t M, int64_t D, float eps);                                 \
    mm_status prefix##_add_bias(mm_backend *be, float *y, const float *bias, int64_t M, int64_t N); \
    mm_status prefix##_gelu(mm_backend *be, float *x, int64_t n, int tanh_approx);                 \
    mm_status prefix##_l2norm(mm_backend *be, const float *x, float *y, int64_t M, int64_t D, float eps); \
    mm_status prefix##_attention_dense(mm_backend *be, const float *q, const float *k, const float *v,      \
                                       int64_t batch, int64_t Tq, int64_t Tk, int32_t n_heads,     \
                                       int32_t head_dim, float scale, float *out);

MM_CPU_DECLARE_OPS(mm_cpu_ref)
MM_CPU_DECLARE_OPS(mm_cpu_fast)

/* Our own batch-invariant matmul (gemm_rows.c), on CPUs where oneDNN's is not. */
mm_status mm_cpu_rows_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M);
/* y[M, N] = x[M, K] . W^T for q8 weights (gemm_q8.c): the plain reference and the AVX2
 * kernel (the reference where the CPU lacks AVX2/FMA/F16C). */
mm_status mm_cpu_q8_matmul_ref(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M);
mm_status mm_cpu_q8_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M);
/* Which GEMM the fast backend uses: oneDNN on AVX-512 CPUs (measured batch-invariant
 * there), gemm_rows.c elsewhere; MM_CPU_GEMM=dnnl|rows overrides (benchmarks, tests). */
int mm_cpu_gemm_uses_dnnl(void);
/* Whether the fast backend's GEMM rounds activations to bf16 for bf16 weights (oneDNN's
 * bf16 kernels do; gemm_rows.c keeps them f32). */
static inline int mm_cpu_gemm_rounds_activations(void) { return mm_cpu_gemm_uses_dnnl(); }

/* oneDNN matmul with a primitive cache (gemm_dnnl.c). */
typedef struct mm_dnnl mm_dnnl;
mm_status mm_dnnl_init(int n_threads, mm_dnnl **out);
void mm_dnnl_free(mm_dnnl *d);
/* y[M,N] = x[M,K] . w[N,K]^T with w f32 or bf16 (x converted to bf16 for bf16 w); w is
 * plain row-major or packed by mm_dnnl_pack (its backend_data says which). */
mm_status mm_dnnl_matmul(mm_dnnl *d, const mm_tensor *w, const float *x, float *y, int64_t M);
/* Reorders a plain [N, K] f32/bf16 weight into the blocked layout oneDNN's matmul
 * prefers for (K, N) (the same for every M, so one copy serves every batch size).
 * Sets *packed (malloc'd, 64-byte aligned) and *desc (malloc'd memory desc). */
mm_status mm_dnnl_pack(mm_dnnl *d, mm_dtype dt, int64_t N, int64_t K, const void *plain, void **packed, void **desc);

/* ---- diffusion decoder ops (ops_decoder_ref.c, ops_decoder_fast.c, conv_dnnl.c) ---- */
#define MM_CPU_DECLARE_DECODER_OPS(prefix)                                                         \
    mm_status prefix##_conv2d(mm_backend *be, const mm_tensor *w, const float *bias, const float *x, float *y, \
                              int64_t B, int64_t H, int64_t W, int32_t stride, int32_t pad);        \
    mm_status prefix##_groupnorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, \
                                 int64_t B, int64_t HW, int64_t C, int32_t groups, float eps, int silu); \
    mm_status prefix##_upsample_nearest2x(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, \
                                          int64_t W, int64_t C);                                     \
    mm_status prefix##_activation(mm_backend *be, float *x, int64_t n, mm_activation act);         \
    mm_status prefix##_geglu(mm_backend *be, const float *x, float *y, int64_t M, int64_t F);       \
    mm_status prefix##_concat_cols(mm_backend *be, const float *a, const float *b, float *y, int64_t M, \
                                   int64_t Na, int64_t Nb);

MM_CPU_DECLARE_DECODER_OPS(mm_cpu_ref)
MM_CPU_DECLARE_DECODER_OPS(mm_cpu_fast)

/* oneDNN convolution (conv_dnnl.c): channels-last f32 activations, primitives cached
 * per shape. Not thread-safe: one caller at a time per context. */
typedef struct mm_dnnl_conv mm_dnnl_conv;
mm_status mm_dnnl_conv_init(int n_threads, mm_dnnl_conv **out);
void mm_dnnl_conv_free(mm_dnnl_conv *c);
/* As the conv2d op; w is plain [OC, IC, k, k] f32 or packed by mm_dnnl_conv_pack. */
mm_status mm_dnnl_conv2d(mm_dnnl_conv *c, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                         int64_t H, int64_t W, int32_t stride, int32_t pad);
/* Reorders a plain f32 [OC, IC, k, k] weight into the blocked layout oneDNN's direct
 * convolution prefers (chosen for stride 1, pad k/2; the same jit kernels take it for
 * stride 2). Sets *packed (64-byte aligned, free()) and *desc (malloc'd memory desc). */
mm_status mm_dnnl_conv_pack(mm_dnnl_conv *c, const int64_t shape[4], const float *plain, void **packed, void **desc);

/* ---- vision encoder ops (ops_vision_ref.c, ops_vision_fast.c) ---- */
#define MM_CPU_DECLARE_VISION_OPS(prefix)                                                          \
    mm_status prefix##_patchify(mm_backend *be, const float *x, float *y, int64_t B, int64_t C, int64_t H, \
                                int64_t W, int32_t p);                                             \
    mm_status prefix##_resize_bilinear(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, \
                                       int64_t W, int64_t C, int64_t Ho, int64_t Wo);

MM_CPU_DECLARE_VISION_OPS(mm_cpu_ref)
MM_CPU_DECLARE_VISION_OPS(mm_cpu_fast)
/* Source taps and weight of output index dst for an in -> out bilinear resize
 * (align_corners=False), shared by both implementations. */
void mm_cpu_bilinear_taps(int64_t in, int64_t out, int64_t dst, int64_t *i0, int64_t *i1, float *lambda);

#endif
