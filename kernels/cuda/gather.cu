/* Gathers and scatters: one thread per output element, index maths as in the
 * reference loops (kernels/cpu/ops_ref.c, ops_vision_ref.c). Host index arrays (ids,
 * slots) are validated on the host and uploaded through the metadata ring. */
#include "gather.cuh"

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__global__ void embed_kernel(const void *table, mm_dtype dt, const int32_t *ids, int64_t M, int64_t D, float *y) {
    GRID_STRIDE(i, M * D) y[i] = mm_cuda_load(table, dt, (int64_t)ids[i / D] * D + i % D);
}

mm_status mm_cuda_embed(mm_backend *be, const mm_tensor *table, const int32_t *ids, int64_t M, float *y) {
    int64_t V = table->shape[0], D = table->shape[1];
    for (int64_t m = 0; m < M; m++)
        if (ids[m] < 0 || ids[m] >= V) return MM_ERROR(MM_ERR_INVALID, "token id %d out of range [0, %lld)", ids[m], (long long)V);
    if (M <= 0) return MM_OK;
    void *ids_d;
    CHECK(mm_cuda_meta(be, ids, (size_t)M * sizeof(int32_t), &ids_d));
    embed_kernel<<<mm_cuda_blocks(M * D, 256), 256, 0, mm_cuda_ctx_of(be)->stream>>>(table->data, table->dtype,
                                                                                 (const int32_t *)ids_d, M, D, y);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}

/* k, v [M, KVH, hd] -> cache [n_blocks, KVH, bs, hd] at slot = block * bs + offset */
__global__ void kv_store_kernel(void *kc, void *vc, const float *k, const float *v, const int32_t *slots, int64_t M,
                                int32_t KVH, int32_t bs, int32_t hd, int bf16) {
    GRID_STRIDE(i, M * KVH * hd) {
        int64_t d = i % hd, h = (i / hd) % KVH, m = i / ((int64_t)hd * KVH);
        int64_t blk = slots[m] / bs, j = slots[m] % bs;
        int64_t at = ((blk * KVH + h) * bs + j) * hd + d;
        if (bf16) {
            ((__nv_bfloat16 *)kc)[at] = __float2bfloat16_rn(k[i]);
            ((__nv_bfloat16 *)vc)[at] = __float2bfloat16_rn(v[i]);
        } else {
            ((float *)kc)[at] = k[i];
            ((float *)vc)[at] = v[i];
        }
    }
}

mm_status mm_cuda_kv_store(mm_backend *be, void *k_cache, void *v_cache, const float *k, const float *v,
                           const int32_t *slots, int64_t M, const mm_attn_shape *s) {
    if (s->kv_dtype != MM_DTYPE_F32 && s->kv_dtype != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "KV cache dtype %s", mm_dtype_name(s->kv_dtype));
    for (int64_t m = 0; m < M; m++)
        if (slots[m] < 0) return MM_ERROR(MM_ERR_INVALID, "KV slot %d of row %lld", slots[m], (long long)m);
    if (M <= 0) return MM_OK;
    void *slots_d;
    CHECK(mm_cuda_meta(be, slots, (size_t)M * sizeof(int32_t), &slots_d));
    kv_store_kernel<<<mm_cuda_blocks(M * s->n_kv_heads * s->head_dim, 256), 256, 0, mm_cuda_ctx_of(be)->stream>>>(
        k_cache, v_cache, k, v, (const int32_t *)slots_d, M, s->n_kv_heads, s->block_size, s->head_dim,
        s->kv_dtype == MM_DTYPE_BF16);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}

/* x [B, C, H, W] -> y [B, gh*gw, C*p*p], row (c, ky, kx) */
__global__ void patchify_kernel(const float *x, float *y, int64_t B, int64_t C, int64_t H, int64_t W, int p) {
    int64_t gh = H / p, gw = W / p, K = C * p * p;
    GRID_STRIDE(i, B * gh * gw * K) {
        int64_t e = i % K, patch = i / K;
        int64_t kx = e % p, ky = (e / p) % p, c = e / (p * p);
        int64_t j = patch % gw, r = (patch / gw) % gh, b = patch / (gw * gh);
        y[i] = x[((b * C + c) * H + r * p + ky) * W + j * p + kx];
    }
}

mm_status mm_cuda_patchify(mm_backend *be, const float *x, float *y, int64_t B, int64_t C, int64_t H, int64_t W,
                           int32_t p) {
    if (p <= 0 || H < p || W < p)
        return MM_ERROR(MM_ERR_INVALID, "patchify: %lldx%lld smaller than patch %d", (long long)H, (long long)W, p);
    int64_t n = B * (H / p) * (W / p) * C * p * p;
    if (n <= 0) return MM_OK;
    patchify_kernel<<<mm_cuda_blocks(n, 256), 256, 0, mm_cuda_ctx_of(be)->stream>>>(x, y, B, C, H, W, p);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}

/* torch's align_corners=False source taps, as mm_cpu_bilinear_taps (f32 maths). */
__device__ void bilinear_taps(int64_t in, int64_t out, int64_t dst, int64_t *i0, int64_t *i1, float *lambda) {
    float scale = (float)in / (float)out;
    float src = fmaxf(scale * ((float)dst + 0.5f) - 0.5f, 0.0f);
    int64_t lo = (int64_t)floorf(src);
    if (lo > in - 1) lo = in - 1;
    float l = src - (float)lo;
    *i0 = lo;
    *i1 = lo + (lo < in - 1 ? 1 : 0);
    *lambda = fminf(fmaxf(l, 0.0f), 1.0f);
}

__global__ void resize_kernel(const float *x, float *y, int64_t B, int64_t H, int64_t W, int64_t C, int64_t Ho,
                              int64_t Wo) {
    GRID_STRIDE(i, B * Ho * Wo * C) {
        int64_t c = i % C, ox = (i / C) % Wo, oy = (i / (C * Wo)) % Ho, b = i / (C * Wo * Ho);
        int64_t y0, y1, x0, x1;
        float ly, lx;
        bilinear_taps(H, Ho, oy, &y0, &y1, &ly);
        bilinear_taps(W, Wo, ox, &x0, &x1, &lx);
        const float *r0 = x + (b * H + y0) * W * C, *r1 = x + (b * H + y1) * W * C;
        float t0 = r0[x0 * C + c] * (1.0f - lx) + r0[x1 * C + c] * lx; /* along x, then y, like torch */
        float t1 = r1[x0 * C + c] * (1.0f - lx) + r1[x1 * C + c] * lx;
        y[i] = t0 * (1.0f - ly) + t1 * ly;
    }
}

mm_status mm_cuda_resize_bilinear(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                  int64_t C, int64_t Ho, int64_t Wo) {
    if (H <= 0 || W <= 0 || Ho <= 0 || Wo <= 0) return MM_ERROR(MM_ERR_INVALID, "resize_bilinear: empty size");
    if (B * C <= 0) return MM_OK;
    resize_kernel<<<mm_cuda_blocks(B * Ho * Wo * C, 256), 256, 0, mm_cuda_ctx_of(be)->stream>>>(x, y, B, H, W, C, Ho,
                                                                                            Wo);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}
