/* Attention as three steps with the score matrix in memory: S = scale Q K^T (cuBLAS
 * strided-batched SGEMM, one batch per KV head and query head of its group), a masked
 * softmax per row of S, O = P V (SGEMM again). For many query rows against the same
 * keys (a prefill chunk, the dense attention of SigLIP, the UNet and the VAE) the
 * GEMMs reuse each K/V tile across rows, which the row-at-a-time kernel of
 * attention.cu cannot. f32 throughout (no TF32): the same arithmetic as the CPU
 * reference up to summation order. */
#ifndef MM_CUDA_ATTENTION_GEMM_CUH
#define MM_CUDA_ATTENTION_GEMM_CUH

#include "cuda_common.cuh"

/* Query rows from which a group of rows sharing keys goes through the GEMMs. */
#define MM_CUDA_ATTN_GEMM_MIN_ROWS 16

/* Strides in floats. Query head h reads KV head h / (H / KVH). */
typedef struct {
    const float *q;              /* row i, head h at q + i * ldq + h * sq */
    const float *k, *v;          /* key j, KV head g at k + j * ldk + g * sk (v alike) */
    float *out;                  /* like q, with ldo, so */
    int64_t ldq, sq, ldk, sk, ldo, so;
    int32_t H, KVH, hd;
    float scale;
    int64_t n, Tk;               /* query rows, keys */
    const int32_t *n_keys;       /* device: row i sees keys [0, n_keys[i * n_keys_stride]); NULL: all Tk */
    int32_t n_keys_stride;
} mm_attn_gemm;

/* Bytes of score scratch for n rows against Tk keys. */
static inline size_t mm_cuda_attn_gemm_scores_bytes(int32_t H, int64_t n, int64_t Tk) {
    return (size_t)H * (size_t)n * (size_t)Tk * sizeof(float);
}
/* Runs a over the device scratch S of mm_cuda_attn_gemm_scores_bytes(a->H, a->n, a->Tk). */
mm_status mm_cuda_attn_gemm(mm_backend *be, const mm_attn_gemm *a, float *S);

/* Paged cache [n_blocks, KVH, bs, hd] (f32 or bf16) -> dense f32 [KVH, Tk, hd] for the
 * keys [0, Tk) of one block table (device). */
mm_status mm_cuda_kv_gather(mm_backend *be, const void *cache, int bf16, const int32_t *table, int32_t bs,
                            int32_t KVH, int32_t hd, int64_t Tk, float *dst);

#endif
