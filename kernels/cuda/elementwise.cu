/* The CUDA backend's pointwise ops as one grid-stride kernel with an op code, so each
 * op is a line of index maths instead of a near-twin kernel. Same scalar formulas as
 * kernels/cpu/ops_ref.c and ops_decoder_ref.c (expf/erff/tanhf, no fast-math). */
#include "elementwise.cuh"

typedef enum {
    EW_SILU_MUL, /* y[i] = silu(y[i]) * a[i] */
    EW_ADD,      /* y[i] += a[i] */
    EW_ADD_BIAS, /* y[i] += a[i % n1] */
    EW_GELU,     /* y[i] = gelu_erf(y[i]) */
    EW_GELU_TANH,
    EW_SILU,
    EW_RELU,
    EW_GEGLU,    /* y[m, f] = a[m, f] * gelu_erf(a[m, n1 + f]), n1 = F */
    EW_CONCAT,   /* y[m, :n1] = a[m, :], y[m, n1:] = b[m, :], row width n1 + n2 */
    EW_UPSAMPLE  /* y[b, 2H, 2W, C] from a[b, H, W, C]: n1 = H, n2 = W, n3 = C */
} ew_op;

__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f)); }

__global__ void ew_kernel(ew_op op, float *y, const float *a, const float *b, int64_t n, int64_t n1, int64_t n2,
                          int64_t n3) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v;
        switch (op) {
        case EW_SILU_MUL: v = y[i]; y[i] = v / (1.0f + expf(-v)) * a[i]; break;
        case EW_ADD: y[i] += a[i]; break;
        case EW_ADD_BIAS: y[i] += a[i % n1]; break;
        case EW_GELU: y[i] = gelu_erf(y[i]); break;
        case EW_GELU_TANH:
            v = y[i];
            y[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
            break;
        case EW_SILU: v = y[i]; y[i] = v / (1.0f + expf(-v)); break;
        case EW_RELU: y[i] = y[i] > 0.0f ? y[i] : 0.0f; break;
        case EW_GEGLU: {
            int64_t m = i / n1, f = i % n1;
            y[i] = a[m * 2 * n1 + f] * gelu_erf(a[m * 2 * n1 + n1 + f]);
            break;
        }
        case EW_CONCAT: {
            int64_t m = i / (n1 + n2), c = i % (n1 + n2);
            y[i] = c < n1 ? a[m * n1 + c] : b[m * n2 + c - n1];
            break;
        }
        case EW_UPSAMPLE: {
            int64_t c = i % n3, ox = (i / n3) % (2 * n2), oy = (i / (n3 * 2 * n2)) % (2 * n1);
            int64_t bt = i / (n3 * 2 * n2 * 2 * n1);
            y[i] = a[((bt * n1 + oy / 2) * n2 + ox / 2) * n3 + c];
            break;
        }
        }
    }
}

static mm_status ew(mm_backend *be, ew_op op, float *y, const float *a, const float *b, int64_t n, int64_t n1 = 0,
                    int64_t n2 = 0, int64_t n3 = 0) {
    if (n <= 0) return MM_OK;
    ew_kernel<<<mm_cuda_blocks(n, 256), 256, 0, mm_cuda_ctx_of(be)->stream>>>(op, y, a, b, n, n1, n2, n3);
    CUDA_LAUNCH_CHECK();
    return MM_OK;
}

mm_status mm_cuda_silu_mul(mm_backend *be, float *gate, const float *up, int64_t n) {
    return ew(be, EW_SILU_MUL, gate, up, NULL, n);
}
mm_status mm_cuda_add(mm_backend *be, float *y, const float *x, int64_t n) { return ew(be, EW_ADD, y, x, NULL, n); }
mm_status mm_cuda_add_bias(mm_backend *be, float *y, const float *bias, int64_t M, int64_t N) {
    return ew(be, EW_ADD_BIAS, y, bias, NULL, M * N, N);
}
mm_status mm_cuda_gelu(mm_backend *be, float *x, int64_t n, int tanh_approx) {
    return ew(be, tanh_approx ? EW_GELU_TANH : EW_GELU, x, NULL, NULL, n);
}
mm_status mm_cuda_activation(mm_backend *be, float *x, int64_t n, mm_activation act) {
    if (act != MM_ACT_SILU && act != MM_ACT_RELU) return MM_ERROR(MM_ERR_INVALID, "activation: unknown kind %d", (int)act);
    return ew(be, act == MM_ACT_SILU ? EW_SILU : EW_RELU, x, NULL, NULL, n);
}
mm_status mm_cuda_geglu(mm_backend *be, const float *x, float *y, int64_t M, int64_t F) {
    return ew(be, EW_GEGLU, y, x, NULL, M * F, F);
}
mm_status mm_cuda_concat_cols(mm_backend *be, const float *a, const float *b, float *y, int64_t M, int64_t Na,
                              int64_t Nb) {
    return ew(be, EW_CONCAT, y, a, b, M * (Na + Nb), Na, Nb);
}
mm_status mm_cuda_upsample_nearest2x(mm_backend *be, const float *x, float *y, int64_t B, int64_t H, int64_t W,
                                     int64_t C) {
    return ew(be, EW_UPSAMPLE, y, x, NULL, B * 4 * H * W * C, H, W, C);
}
