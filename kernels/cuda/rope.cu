/* RoPE: one thread per rotated pair (row, head, i < head_dim/2), the angle computed
 * as pos * inv_freq[i] in f32 like the reference (accurate sincosf, no fast-math). */
#include "rope.cuh"

__global__ void rope_kernel(float *x, const int32_t *pos, const float *inv_freq, int64_t M, int32_t H, int32_t half) {
    int64_t n = M * H * half;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n; t += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = t % half, mh = t / half, m = mh / H;
        float *v = x + mh * 2 * half;
        float angle = (float)pos[m] * inv_freq[i], s, c;
        sincosf(angle, &s, &c);
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

mm_status mm_cuda_rope(mm_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t M,
                       int32_t n_heads, int32_t head_dim) {
    if (M <= 0) return MM_OK;
    int32_t half = head_dim / 2;
    void *pos_d, *freq_d;
    CHECK(mm_cuda_meta(be, pos, (size_t)M * sizeof(int32_t), &pos_d));
    CHECK(mm_cuda_meta(be, inv_freq, (size_t)half * sizeof(float), &freq_d));
    rope_kernel<<<mm_cuda_blocks(M * n_heads * half, 256), 256, 0, mm_cuda_ctx_of(be)->stream>>>(
        x, (const int32_t *)pos_d, (const float *)freq_d, M, n_heads, half);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}
