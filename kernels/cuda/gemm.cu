/* matmul and conv2d on cuBLAS. y[M, N] = x[M, K] . W[N, K]^T is, in cuBLAS's
 * column-major terms, y^T[N, M] = op_T(W)[N, K] . x^T[K, M]. bf16/f16 weights multiply
 * an activation rounded to the weight's type (as the CPU fast path does), with f32
 * accumulation and f32 output; f32 weights use plain f32 (no TF32: the CPU reference
 * is the truth). conv2d is im2col (channels-last, chunked so the column buffer stays
 * bounded) followed by the same GEMM against [OC, k*k*IC] weights packed at load.
 * Single-row matmuls (M <= GEMV_MAX_ROWS, bf16/f16 weights: a batch-1 decode step)
 * skip cuBLAS: a warp per weight row streams it once with 16-byte loads and dots it
 * with the x rows (rounded to the weight type on the fly, the same arithmetic). On an
 * H200 (LLaMA-3.1-8B shapes) that lifted batch-1 decode from 126 to 133 tokens/s, but
 * at M = 8 it fell from 984 to 374 (every warp re-reads all x rows from L1), hence the
 * limit of 1; the kernel itself takes up to 8 rows. Otherwise not batch-invariant
 * across M: cuBLAS picks its kernel per shape. */
#include "gemm.cuh"

#include "elementwise.cuh"

#define IM2COL_MAX_BYTES ((size_t)256 << 20) /* column buffer per chunk */
#define GEMV_MAX_ROWS 1 /* measured: see the top of this file */
#define GEMV_WARPS 8 /* weight rows per block */

/* dst[i] = src[i] rounded to bf16 (to_bf16) or f16 */
__global__ void convert_f32_kernel(const float *src, void *dst, int64_t n, int to_bf16) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        if (to_bf16) ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(src[i]);
        else ((__half *)dst)[i] = __float2half_rn(src[i]);
    }
}

/* y[M, N] = x[M, K] . w[N, K]^T for a device w of dtype wt and x already in wt. */
static mm_status gemm(mm_backend *be, const void *w, mm_dtype wt, const void *x, float *y, int64_t M, int64_t N,
                      int64_t K) {
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "matmul %lldx%lldx%lld exceeds cuBLAS's int sizes", (long long)M,
                        (long long)N, (long long)K);
    const float one = 1.0f, zero = 0.0f;
    cudaDataType_t t = wt == MM_DTYPE_BF16 ? CUDA_R_16BF : wt == MM_DTYPE_F16 ? CUDA_R_16F : CUDA_R_32F;
    CUBLAS_CHECK(cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w, t, (int)K, x, t,
                              (int)K, &zero, y, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return MM_OK;
}

/* 16-bit weight element to f32; x rounded to the weight's type and back */
template <int BF16> __device__ __forceinline__ float w16_to_f32(uint32_t bits) {
    return BF16 ? __uint_as_float(bits << 16) : __half2float(__ushort_as_half((unsigned short)bits));
}
template <int BF16> __device__ __forceinline__ float round_to_w(float v) {
    return BF16 ? __bfloat162float(__float2bfloat16_rn(v)) : __half2float(__float2half_rn(v));
}

/* y[m, n] = sum_k round(x[m, k]) * w[n, k] for m < MR: warp (blockIdx.x, warp) owns row n. */
template <int MR, int BF16>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_kernel(const uint16_t *w, const float *x, float *y, int64_t N,
                                                              int64_t K, int vec) {
    int64_t n = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const int lane = threadIdx.x & 31;
    const uint16_t *wr = w + n * K;
    float acc[MR];
#pragma unroll
    for (int m = 0; m < MR; m++) acc[m] = 0.0f;
    if (vec) { /* rows 16-byte aligned: 8 weights and 2 x 4 activations per load */
#pragma unroll 4
        for (int64_t k = (int64_t)lane * 8; k < K; k += 32 * 8) {
            uint4 q = __ldg((const uint4 *)(wr + k));
            float wf[8] = {w16_to_f32<BF16>(q.x & 0xffffu), w16_to_f32<BF16>(q.x >> 16),
                           w16_to_f32<BF16>(q.y & 0xffffu), w16_to_f32<BF16>(q.y >> 16),
                           w16_to_f32<BF16>(q.z & 0xffffu), w16_to_f32<BF16>(q.z >> 16),
                           w16_to_f32<BF16>(q.w & 0xffffu), w16_to_f32<BF16>(q.w >> 16)};
#pragma unroll
            for (int m = 0; m < MR; m++) {
                float4 a = __ldg((const float4 *)(x + m * K + k)), b = __ldg((const float4 *)(x + m * K + k + 4));
                float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                for (int e = 0; e < 8; e++) acc[m] = fmaf(round_to_w<BF16>(xs[e]), wf[e], acc[m]);
            }
        }
    } else {
        for (int64_t k = lane; k < K; k += 32) {
            float wf = w16_to_f32<BF16>(wr[k]);
#pragma unroll
            for (int m = 0; m < MR; m++) acc[m] = fmaf(round_to_w<BF16>(x[m * K + k]), wf, acc[m]);
        }
    }
#pragma unroll
    for (int m = 0; m < MR; m++) {
        float v = acc[m];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) y[m * N + n] = v;
    }
}

template <int MR> static void gemv_launch(const uint16_t *w, int bf16, const float *x, float *y, int64_t N, int64_t K,
                                          cudaStream_t st) {
    unsigned blocks = (unsigned)((N + GEMV_WARPS - 1) / GEMV_WARPS);
    int vec = K % 8 == 0 && (uintptr_t)w % 16 == 0 && (uintptr_t)x % 16 == 0;
    if (bf16) gemv_kernel<MR, 1><<<blocks, GEMV_WARPS * 32, 0, st>>>(w, x, y, N, K, vec);
    else gemv_kernel<MR, 0><<<blocks, GEMV_WARPS * 32, 0, st>>>(w, x, y, N, K, vec);
}

static mm_status gemv(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M, int64_t N, int64_t K) {
    cudaStream_t st = mm_cuda_ctx_of(be)->stream;
    const uint16_t *wd = (const uint16_t *)w->data;
    int bf16 = w->dtype == MM_DTYPE_BF16;
    if (N > (int64_t)GEMV_WARPS * INT32_MAX) return MM_ERROR(MM_ERR_UNSUPPORTED, "matmul with %lld outputs", (long long)N);
    if (M != 1) return MM_ERROR(MM_ERR_INVALID, "gemv: %lld rows (GEMV_MAX_ROWS is 1)", (long long)M);
    gemv_launch<1>(wd, bf16, x, y, N, K, st);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}

mm_status mm_cuda_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    int64_t N = w->shape[0], K = w->shape[1];
    if (M <= 0) return MM_OK;
    if (w->dtype == MM_DTYPE_F32) return gemm(be, w->data, w->dtype, x, y, M, N, K);
    if (w->dtype != MM_DTYPE_BF16 && w->dtype != MM_DTYPE_F16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "matmul weight dtype %s", mm_dtype_name(w->dtype));
    if (M <= GEMV_MAX_ROWS) return gemv(be, w, x, y, M, N, K);
    void *xc; /* [M, K] in the weight's 16-bit type */
    CHECK(mm_cuda_scratch(be, (size_t)(M * K) * 2, &xc));
    convert_f32_kernel<<<mm_cuda_blocks(M * K, 256), 256, 0, mm_cuda_ctx_of(be)->stream>>>(
        x, xc, M * K, w->dtype == MM_DTYPE_BF16);
    CUDA_LAUNCH_CHECK();
    return gemm(be, w->data, w->dtype, xc, y, M, N, K);
}

void mm_cuda_conv_weight_pack(const float *src, int64_t OC, int64_t IC, int64_t k, float *dst) {
    for (int64_t oc = 0; oc < OC; oc++)
        for (int64_t ic = 0; ic < IC; ic++)
            for (int64_t ky = 0; ky < k; ky++)
                for (int64_t kx = 0; kx < k; kx++)
                    dst[((oc * k + ky) * k + kx) * IC + ic] = src[((oc * IC + ic) * k + ky) * k + kx];
}

/* col[r - r0, (ky*k + kx)*IC + ic] for output pixels r in [r0, r0 + rows) of x [B, H, W, IC] */
__global__ void im2col_kernel(const float *x, float *col, int64_t r0, int64_t rows, int64_t H, int64_t W, int64_t IC,
                              int64_t Ho, int64_t Wo, int k, int stride, int pad) {
    int64_t KK = (int64_t)k * k * IC, n = rows * KK;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = r0 + i / KK, e = i % KK;
        int64_t ic = e % IC, kx = (e / IC) % k, ky = e / (IC * k);
        int64_t ox = r % Wo, oy = (r / Wo) % Ho, b = r / (Wo * Ho);
        int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
        col[i] = iy >= 0 && iy < H && ix >= 0 && ix < W ? x[((b * H + iy) * W + ix) * IC + ic] : 0.0f;
    }
}

mm_status mm_cuda_conv2d(mm_backend *be, const mm_tensor *w, const float *bias, const float *x, float *y, int64_t B,
                         int64_t H, int64_t W, int32_t stride, int32_t pad) {
    int64_t OC = w->shape[0], IC = w->shape[1], k = w->shape[2];
    if (w->ndim != 4 || w->shape[3] != k || stride <= 0 || pad < 0 || w->dtype != MM_DTYPE_F32)
        return MM_ERROR(MM_ERR_INVALID, "conv2d: weight must be f32 [OC, IC, k, k], stride > 0, pad >= 0");
    int64_t Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1, R = B * Ho * Wo;
    int64_t KK = k * k * IC;
    cudaStream_t st = mm_cuda_ctx_of(be)->stream;
    if (R <= 0) return MM_OK;
    if (k == 1 && stride == 1 && pad == 0) { /* a 1x1 conv is a matmul on the pixels */
        CHECK(gemm(be, w->data, MM_DTYPE_F32, x, y, R, OC, IC));
    } else {
        int64_t chunk = (int64_t)(IM2COL_MAX_BYTES / (size_t)(KK * 4));
        if (chunk < 1) chunk = 1;
        if (chunk > R) chunk = R;
        float *col; /* [chunk, k*k*IC] */
        CHECK(mm_cuda_scratch(be, (size_t)(chunk * KK) * sizeof(float), (void **)&col));
        for (int64_t r0 = 0; r0 < R; r0 += chunk) {
            int64_t rows = R - r0 < chunk ? R - r0 : chunk;
            im2col_kernel<<<mm_cuda_blocks(rows * KK, 256), 256, 0, st>>>(x, col, r0, rows, H, W, IC, Ho, Wo, (int)k,
                                                                          stride, pad);
            CUDA_LAUNCH_CHECK();
            CHECK(gemm(be, w->data, MM_DTYPE_F32, col, y + r0 * OC, rows, OC, KK));
        }
    }
    if (bias) {
        CHECK(mm_cuda_add_bias(be, y, bias, R, OC));
    }
    return MM_OK;
}
