/* The compute backend interface (like ggml_backend_i): a table of function pointers
 * plus a context. Model code calls only these; each backend (cpu reference, cpu fast,
 * cuda) implements them over its own memory. On the CPU backends every op is
 * batch-invariant: the result of one row never depends on the other rows, the batch
 * size or the thread count (reductions run in a fixed order per output element). The
 * CUDA backend is not, where cuBLAS chooses kernels by shape: matmul beyond one row and
 * attention over groups of 16+ rows sharing keys (kernels/cuda/gemm.cu, attention.cu).
 *
 * Shapes: M rows of activations; weights W are [N, K] (nn.Linear layout); heads are
 * laid out [M, n_heads, head_dim]. The paged KV cache of one layer is
 * [n_blocks, n_kv_heads, block_size, head_dim] for K and for V (one head's keys of a
 * block are contiguous, so a row streams them), and a row reads its keys
 * 0..n_keys-1 through its sequence's block table. */
#ifndef MM_BACKEND_H
#define MM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/rng.h" /* sampling's generator: one state per row */
#include "common/safetensors.h"
#include "common/status.h"
#include "tensor.h"

typedef struct mm_backend mm_backend;

/* Per-row attention input: the sequence's block table and how many keys it sees. */
typedef struct {
    const int32_t *block_table; /* [ceil(n_keys / block_size)] block ids */
    int32_t n_keys;             /* keys 0..n_keys-1 are attended (causal: pos + 1) */
} mm_attn_row;

typedef struct {
    int32_t n_heads, n_kv_heads, head_dim, block_size;
    float scale;      /* usually 1/sqrt(head_dim) */
    mm_dtype kv_dtype; /* element type of the KV cache: F32, or BF16 (half the memory traffic) */
} mm_attn_shape;

/* Sampling parameters of one row. temperature 0 means greedy (argmax, lowest id wins ties). */
typedef struct {
    float temperature;
    float top_p;    /* 1 = off */
    int32_t top_k;  /* 0 = off */
} mm_sampling;

/* How a checkpoint tensor will be used, so a backend may lay it out for that use. */
typedef enum {
    MM_WEIGHT_MATMUL = 0, /* the W of matmul; may be packed into a backend-private layout */
    MM_WEIGHT_TABLE,      /* rows are gathered (embedding); stays row-major */
    MM_WEIGHT_VECTOR,     /* a small vector (norm weight, bias); always f32 */
    MM_WEIGHT_CONV        /* the W of conv2d, [OC, IC, k, k]; f32, may be packed */
} mm_weight_use;

/* Pointwise activations of the activation op. */
typedef enum { MM_ACT_SILU = 0, MM_ACT_RELU } mm_activation;

/* The ops every backend implements. Activation pointers are backend memory. */
typedef struct mm_backend_ops {
    const char *name;
    void (*free)(mm_backend *be);

    /* memory */
    void *(*alloc)(mm_backend *be, size_t bytes);
    void (*dealloc)(mm_backend *be, void *p);
    mm_status (*upload)(mm_backend *be, void *dst, const void *src, size_t bytes);
    mm_status (*download)(mm_backend *be, void *dst, const void *src, size_t bytes);
    mm_status (*copy)(mm_backend *be, void *dst, const void *src, size_t bytes); /* within the backend */
    /* Makes a checkpoint tensor usable as an op input for the given use (may convert
     * or pack it, or alias the mapping). weight_release undoes it. */
    mm_status (*weight_load)(mm_backend *be, const mm_st_tensor *src, mm_weight_use use, mm_tensor *out);
    void (*weight_release)(mm_backend *be, mm_tensor *t);
    /* The same for a q8 matmul weight (common/q8.h): w I8 [N, K], scales F16 [N, K/32];
     * out gets dtype I8 and .scales. NULL where the backend has no int8 matmul. */
    mm_status (*weight_load_q8)(mm_backend *be, const mm_st_tensor *w, const mm_st_tensor *scales, mm_tensor *out);

    /* y[M, D] = table[ids[m], :] (table [V, D], any float dtype) */
    mm_status (*embed)(mm_backend *be, const mm_tensor *table, const int32_t *ids, int64_t M, float *y);
    /* y[M, N] = x[M, K] . W[N, K]^T (W float, or I8 from weight_load_q8: x is then
     * quantized per row and block of 32 as Q8_0 does, and the block products summed in f32) */
    mm_status (*matmul)(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M);
    /* y[M, D] = x / sqrt(mean(x^2) + eps) * w[D]  (y may alias x) */
    mm_status (*rmsnorm)(mm_backend *be, const float *x, const float *w, float *y, int64_t M, int64_t D, float eps);
    /* In place on x[M, n_heads, head_dim], rotate-half convention (HF LLaMA):
     * pairs (i, i + head_dim/2) rotated by pos[m] * inv_freq[i]. */
    mm_status (*rope)(mm_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t M,
                      int32_t n_heads, int32_t head_dim);
    /* Writes k, v [M, n_kv_heads*head_dim] into the cache at slots[m] = block*block_size + offset. */
    mm_status (*kv_store)(mm_backend *be, void *k_cache, void *v_cache, const float *k, const float *v,
                          const int32_t *slots, int64_t M, const mm_attn_shape *shape);
    /* out[M, n_heads, head_dim] = softmax(q k^T * scale) v over each row's keys, grouped-query:
     * head h reads kv head h / (n_heads / n_kv_heads). rows lives in host memory. */
    mm_status (*attention)(mm_backend *be, const float *q, const void *k_cache, const void *v_cache,
                           const mm_attn_row *rows, int64_t M, const mm_attn_shape *shape, float *out);
    /* gate[M, N] = silu(gate) * up */
    mm_status (*silu_mul)(mm_backend *be, float *gate, const float *up, int64_t n);
    /* y += x (n elements) */
    mm_status (*add)(mm_backend *be, float *y, const float *x, int64_t n);
    /* y = softmax(x) per row, x [M, N] (y may alias x) */
    mm_status (*softmax)(mm_backend *be, const float *x, float *y, int64_t M, int64_t N);
    /* ---- encoder / decoder ops (SigLIP, adapter, UNet, VAE) ---- */
    /* y[M, D] = (x - mean) / sqrt(var + eps) * w + b; w, b may be NULL (1, 0); y may alias x */
    mm_status (*layernorm)(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t M,
                           int64_t D, float eps);
    /* y[M, N] += bias[N] */
    mm_status (*add_bias)(mm_backend *be, float *y, const float *bias, int64_t M, int64_t N);
    /* x = gelu(x) in place: exact (erf) or the tanh approximation */
    mm_status (*gelu)(mm_backend *be, float *x, int64_t n, int tanh_approx);
    /* y[M, D] = x / max(||x||_2, eps) per row (torch.nn.functional.normalize); y may alias x */
    mm_status (*l2norm)(mm_backend *be, const float *x, float *y, int64_t M, int64_t D, float eps);
    /* Unmasked attention for `batch` independent problems: q [batch, Tq, H, hd],
     * k and v [batch, Tk, H, hd], out [batch, Tq, H, hd]. */
    mm_status (*attention_dense)(mm_backend *be, const float *q, const float *k, const float *v, int64_t batch,
                                 int64_t Tq, int64_t Tk, int32_t n_heads, int32_t head_dim, float scale, float *out);

    /* ---- diffusion decoder ops (UNet, VAE). Images are channels-last: [B, H, W, C],
     * so a [B, H*W, C] feature map is also the token layout of the attention blocks. ---- */
    /* y[B, Ho, Wo, OC] = conv(x[B, H, W, IC], w[OC, IC, k, k]) + bias[OC] (bias may be NULL),
     * zero padding pad, stride s: Ho = (H + 2 pad - k) / s + 1. w from weight_load(MM_WEIGHT_CONV). */
    mm_status (*conv2d)(mm_backend *be, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                        int64_t H, int64_t W, int32_t stride, int32_t pad);
    /* y[B, HW, C] = (x - mean) / sqrt(var + eps) * w[C] + b[C], statistics per (b, group of C/groups
     * channels) over HW; then SiLU when silu != 0. y may alias x. */
    mm_status (*groupnorm)(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t B,
                           int64_t HW, int64_t C, int32_t groups, float eps, int silu);
    /* y[B, 2H, 2W, C] = x[B, H, W, C] repeated 2x2 (nearest) */
    mm_status (*upsample_nearest2x)(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                    int64_t C);
    /* x = act(x) in place (n elements) */
    mm_status (*activation)(mm_backend *be, float *x, int64_t n, mm_activation act);
    /* y[M, F] = x[M, :F] * gelu_erf(x[M, F:]), x [M, 2F] (diffusers GEGLU); y must not alias x */
    mm_status (*geglu)(mm_backend *be, const float *x, float *y, int64_t M, int64_t F);
    /* y[M, Na + Nb] = [a[M, Na] | b[M, Nb]] (channel concat of skip connections) */
    mm_status (*concat_cols)(mm_backend *be, const float *a, const float *b, float *y, int64_t M, int64_t Na,
                             int64_t Nb);

    /* Picks one id per row of logits [M, V]. rng: one 64-bit state per row (advanced). */
    mm_status (*sample)(mm_backend *be, const float *logits, int64_t M, int64_t V, const mm_sampling *params,
                        uint64_t *rng, int32_t *out);

    /* ---- vision encoder ops (SigLIP patch embedding, MetaMorph token reduction) ---- */
    /* Patches of channels-first images as GEMM rows (patch conv = patchify + matmul):
     * x [B, C, H, W] -> y [B, (H/p)*(W/p), C*p*p] (floor division), patch (i, j) in row-major grid order, each
     * row flattened (c, ky, kx) like a Conv2d weight [OC, C, p, p]. As a stride-p conv without
     * padding, a remainder of H or W smaller than p is ignored (384 / 14 -> 27 patches). */
    mm_status (*patchify)(mm_backend *be, const float *x, float *y, int64_t B, int64_t C, int64_t H, int64_t W,
                          int32_t p);
    /* Bilinear resize with align_corners=False (torch F.interpolate): x [B, H, W, C] ->
     * y [B, Ho, Wo, C], channels last (a [H*W, C] token grid). */
    mm_status (*resize_bilinear)(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                 int64_t C, int64_t Ho, int64_t Wo);
} mm_backend_ops;

struct mm_backend {
    const mm_backend_ops *ops;
    int n_threads;
    void *ctx; /* backend-private state */
};

/* CPU backends. "cpu-ref": plain loops, single thread, the truth every other backend
 * is tested against. "cpu": fast paths (oneDNN GEMM, vectorised loops, n_threads). */
mm_status mm_backend_cpu_ref_init(mm_backend **out);
mm_status mm_backend_cpu_init(int n_threads, mm_backend **out);
/* By name: "cpu", "cpu-ref" (and "cuda" when built with it). n_threads <= 0: all cores. */
mm_status mm_backend_init(const char *name, int n_threads, mm_backend **out);
void mm_backend_free(mm_backend *be);

#endif
