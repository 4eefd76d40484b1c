/* Row reductions on the GPU. One block of 256 threads per row; each thread sums a
 * strided slice, then a fixed-order block sum, so a row's result never depends on the
 * other rows (batch-invariant). Layernorm and softmax take two passes over the row
 * (mean/max first) like the reference; group norm sums in double like the reference,
 * one block per (image, group). y may alias x. */
#include "norm.cuh"

#define NORM_THREADS 256

typedef enum { ROW_RMS, ROW_LAYER, ROW_L2, ROW_SOFTMAX } row_mode;

__global__ void row_kernel(row_mode mode, const float *x, const float *w, const float *b, float *y, int64_t D,
                           float eps) {
    const float *xr = x + blockIdx.x * D;
    float *yr = y + blockIdx.x * D;
    float center = 0.0f; /* layernorm: mean; softmax: max */
    if (mode == ROW_LAYER) {
        float s = 0.0f;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) s += xr[d];
        center = mm_cuda_block_sum(s) / (float)D;
    } else if (mode == ROW_SOFTMAX) {
        float m = -INFINITY;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) m = fmaxf(m, xr[d]);
        __shared__ float mx[NORM_THREADS];
        mx[threadIdx.x] = m;
        __syncthreads();
        for (int i = 0; i < (int)blockDim.x; i++) m = fmaxf(m, mx[i]);
        center = m;
    }
    float acc = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float v = xr[d] - center;
        acc += mode == ROW_SOFTMAX ? expf(v) : v * v;
    }
    float total = mm_cuda_block_sum(acc);
    float scale = mode == ROW_RMS     ? 1.0f / sqrtf(total / (float)D + eps)
                  : mode == ROW_LAYER ? 1.0f / sqrtf(total / (float)D + eps)
                  : mode == ROW_L2    ? 1.0f / fmaxf(sqrtf(total), eps)
                                      : 1.0f / total;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float v = xr[d];
        switch (mode) {
        case ROW_RMS: yr[d] = w[d] * (v * scale); break;
        case ROW_LAYER: yr[d] = (v - center) * scale * (w ? w[d] : 1.0f) + (b ? b[d] : 0.0f); break;
        case ROW_L2: yr[d] = v * scale; break;
        case ROW_SOFTMAX: yr[d] = expf(v - center) * scale; break;
        }
    }
}

static mm_status rows(mm_backend *be, row_mode mode, const float *x, const float *w, const float *b, float *y,
                      int64_t M, int64_t D, float eps) {
    if (M <= 0 || D <= 0) return MM_OK;
    if (M > INT32_MAX) return MM_ERROR(MM_ERR_UNSUPPORTED, "row op over %lld rows", (long long)M);
    row_kernel<<<(unsigned)M, NORM_THREADS, 0, mm_cuda_ctx_of(be)->stream>>>(mode, x, w, b, y, D, eps);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}

mm_status mm_cuda_rmsnorm(mm_backend *be, const float *x, const float *w, float *y, int64_t M, int64_t D, float eps) {
    return rows(be, ROW_RMS, x, w, NULL, y, M, D, eps);
}
mm_status mm_cuda_layernorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t M,
                            int64_t D, float eps) {
    return rows(be, ROW_LAYER, x, w, b, y, M, D, eps);
}
mm_status mm_cuda_l2norm(mm_backend *be, const float *x, float *y, int64_t M, int64_t D, float eps) {
    return rows(be, ROW_L2, x, NULL, NULL, y, M, D, eps);
}
mm_status mm_cuda_softmax(mm_backend *be, const float *x, float *y, int64_t M, int64_t N) {
    return rows(be, ROW_SOFTMAX, x, NULL, NULL, y, M, N, 0.0f);
}

/* grid (groups, B): statistics of x[b, :, g*cg:(g+1)*cg] in double, then normalise. */
__global__ void groupnorm_kernel(const float *x, const float *w, const float *b, float *y, int64_t HW, int64_t C,
                                 int64_t cg, float eps, int silu) {
    int64_t base = blockIdx.y * HW * C + blockIdx.x * cg, n = HW * cg;
    double s = 0.0;
    for (int64_t e = threadIdx.x; e < n; e += blockDim.x) s += x[base + (e / cg) * C + e % cg];
    double mean = mm_cuda_block_sum(s) / (double)n;
    double v = 0.0;
    for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
        double d = x[base + (e / cg) * C + e % cg] - mean;
        v += d * d;
    }
    double var = mm_cuda_block_sum(v) / (double)n;
    float m = (float)mean, inv = (float)(1.0 / sqrt(var + eps));
    for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
        int64_t at = base + (e / cg) * C + e % cg, c = blockIdx.x * cg + e % cg;
        float o = (x[at] - m) * inv * w[c] + b[c];
        y[at] = silu ? o / (1.0f + expf(-o)) : o;
    }
}

mm_status mm_cuda_groupnorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t B,
                            int64_t HW, int64_t C, int32_t groups, float eps, int silu) {
    if (groups <= 0 || C % groups)
        return MM_ERROR(MM_ERR_INVALID, "groupnorm: %lld channels not divisible by %d groups", (long long)C, groups);
    if (B <= 0 || HW <= 0) return MM_OK;
    groupnorm_kernel<<<dim3((unsigned)groups, (unsigned)B), NORM_THREADS, 0, mm_cuda_ctx_of(be)->stream>>>(
        x, w, b, y, HW, C, C / groups, eps, silu);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}
