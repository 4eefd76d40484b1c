/* Attention through the score matrix: see attention_gemm.cuh. */
#include "attention_gemm.cuh"

#define SOFTMAX_THREADS 256

/* Row r of S [H * n, Tk] (head r / n, query row r % n): softmax over its first `valid`
 * keys, zeros after them (a row with no keys is all zeros, so its output is 0). */
__global__ void masked_softmax_kernel(float *S, int64_t n, int64_t Tk, const int32_t *n_keys, int32_t stride) {
    int64_t r = blockIdx.x, i = r % n;
    float *s = S + r * Tk;
    int64_t valid = n_keys ? (int64_t)n_keys[i * stride] : Tk;
    if (valid > Tk) valid = Tk;
    if (valid < 0) valid = 0;
    __shared__ float red[SOFTMAX_THREADS / 32];
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) mx = fmaxf(mx, s[j]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < SOFTMAX_THREADS / 32; w++) mx = fmaxf(mx, red[w]);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) {
        float p = expf(s[j] - mx);
        s[j] = p;
        sum += p;
    }
    sum = mm_cuda_block_sum(sum);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) s[j] = j < valid ? s[j] * inv : 0.0f;
}

mm_status mm_cuda_attn_gemm(mm_backend *be, const mm_attn_gemm *a, float *S) {
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    if (a->n <= 0) return MM_OK;
    if (a->H % a->KVH) return MM_ERROR(MM_ERR_INVALID, "attention: %d heads not a multiple of %d KV heads", a->H, a->KVH);
    if (a->n > INT32_MAX || a->Tk > INT32_MAX || (int64_t)a->H * a->n > INT32_MAX)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "attention GEMM of %lld rows x %lld keys", (long long)a->n, (long long)a->Tk);
    const int group = a->H / a->KVH, n = (int)a->n, Tk = (int)a->Tk, hd = a->hd;
    const long long s_head = (long long)a->n * a->Tk; /* S is [H, n, Tk] */
    const float one = 1.0f, zero = 0.0f;
    /* S[h] = scale Q_h K_g^T, heads g*group + j for g in [0, KVH) per call. Row-major
     * y[n, Tk] = x[n, hd] . W[Tk, hd]^T is column-major y^T = op_T(W) . x^T. */
    for (int j = 0; j < group; j++)
        CUBLAS_CHECK(cublasSgemmStridedBatched(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, Tk, n, hd, &a->scale, a->k,
                                               (int)a->ldk, (long long)a->sk, a->q + j * a->sq, (int)a->ldq,
                                               (long long)group * a->sq, &zero, S + j * s_head, Tk,
                                               (long long)group * s_head, a->KVH));
    if (a->Tk > 0) {
        masked_softmax_kernel<<<(unsigned)(a->H * a->n), SOFTMAX_THREADS, 0, c->stream>>>(S, a->n, a->Tk, a->n_keys,
                                                                                        a->n_keys_stride);
        CUDA_LAUNCH_CHECK();
    }
    /* O_h = P_h V_g: row-major y[n, hd] = x[n, Tk] . W[Tk, hd] is column-major y^T = W^T . x^T */
    for (int j = 0; j < group; j++)
        CUBLAS_CHECK(cublasSgemmStridedBatched(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, hd, n, Tk, &one, a->v, (int)a->ldk,
                                               (long long)a->sk, S + j * s_head, Tk, (long long)group * s_head, &zero,
                                               a->out + j * a->so, (int)a->ldo, (long long)group * a->so, a->KVH));
    return MM_OK;
}

__global__ void kv_gather_kernel(const void *cache, int bf16, const int32_t *table, int32_t bs, int32_t KVH, int32_t hd,
                                 int64_t Tk, float *dst) {
    int64_t n = (int64_t)KVH * Tk * hd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t e = i % hd, t = (i / hd) % Tk, g = i / (hd * Tk);
        int64_t src = (((int64_t)table[t / bs] * KVH + g) * bs + t % bs) * hd + e;
        dst[i] = bf16 ? __bfloat162float(((const __nv_bfloat16 *)cache)[src]) : ((const float *)cache)[src];
    }
}

mm_status mm_cuda_kv_gather(mm_backend *be, const void *cache, int bf16, const int32_t *table, int32_t bs,
                            int32_t KVH, int32_t hd, int64_t Tk, float *dst) {
    int64_t n = (int64_t)KVH * Tk * hd;
    if (n <= 0) return MM_OK;
    kv_gather_kernel<<<mm_cuda_blocks(n, 256), 256, 0, mm_cuda_ctx_of(be)->stream>>>(cache, bf16, table, bs, KVH, hd,
                                                                                      Tk, dst);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}
