/* Sampling on the GPU, matching kernels/cpu/sample.c draw for draw: the host draws the
 * row's one uniform from its generator (mm_rng_uniform), one block per row does the
 * O(V) work, and the ids come back.
 *  - greedy: block argmax, lowest id on ties;
 *  - temperature only: inverse CDF in id order (double sums, per-thread contiguous
 *    chunks, then a fixed-order walk);
 *  - top-k / top-p: the n = min(k, SAMPLE_CAP) best candidates are found by a radix
 *    select on the f32 bit pattern and bitonic-sorted (logit desc, id asc) in shared
 *    memory, with the full-vocabulary softmax mass; the host then walks the nucleus
 *    exactly as the CPU code does. A row whose nucleus does not close within the
 *    candidates (or with more than SAMPLE_CAP ties at the threshold, or a top-k above
 *    SAMPLE_CAP) is downloaded and sampled by the CPU code, so results never depend on
 *    the cap. */
#include "sample.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" mm_status mm_cpu_sample(mm_backend *be, const float *logits, int64_t M, int64_t V,
                                   const mm_sampling *params, uint64_t *rng, int32_t *out);

#define SAMPLE_THREADS 1024
#define SAMPLE_CAP 2048 /* candidates sorted in shared memory (power of two) */

enum { KIND_GREEDY = 0, KIND_PLAIN, KIND_NUCLEUS };

typedef struct {
    float temperature, u; /* u: the row's uniform draw */
    int32_t kind, n;      /* n: candidates wanted (nucleus) */
} row_info;

typedef struct {
    float logit;
    int32_t id;
} cand;

__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* a before b: higher logit, then lower id */
__device__ __forceinline__ bool cand_before(float la, int32_t ia, float lb, int32_t ib) {
    return la > lb || (la == lb && ia < ib);
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(const float *logits, int64_t V, const row_info *info, int32_t *ids, int32_t *overflow,
                  double *totals, cand *cands) {
    __shared__ float s_logit[SAMPLE_CAP];
    __shared__ int32_t s_id[SAMPLE_CAP];
    __shared__ double s_sum[SAMPLE_THREADS];
    __shared__ int s_count;
    const int64_t row = blockIdx.x;
    const float *x = logits + row * V;
    const row_info ri = info[row];
    const int tid = threadIdx.x;
    /* argmax: strided scan, then a fixed-order merge of the per-thread bests */
    float bv = -INFINITY;
    int64_t bi = -1;
    for (int64_t i = tid; i < V; i += blockDim.x)
        if (bi < 0 || x[i] > bv) bv = x[i], bi = i; /* strided: later i are larger ids */
    s_logit[tid] = bv, s_id[tid] = (int32_t)bi;
    __syncthreads();
    if (tid == 0) {
        for (int t = 1; t < (int)blockDim.x; t++)
            if (s_id[t] >= 0 && (s_id[0] < 0 || cand_before(s_logit[t], s_id[t], s_logit[0], s_id[0])))
                s_logit[0] = s_logit[t], s_id[0] = s_id[t];
        ids[row] = s_id[0];
    }
    __syncthreads();
    float best = s_logit[0];
    if (ri.kind == KIND_GREEDY) return;
    const float T = ri.temperature, mx = best / T;
    const int64_t cs = (V + blockDim.x - 1) / blockDim.x, lo = tid * cs, hi = lo + cs < V ? lo + cs : V;
    double part = 0.0;
    for (int64_t i = lo; i < hi; i++) part += exp((double)(x[i] / T - mx));
    s_sum[tid] = part;
    __syncthreads();
    if (ri.kind == KIND_PLAIN) {
        if (tid == 0) {
            double total = 0.0, acc = 0.0;
            for (int t = 0; t < (int)blockDim.x; t++) total += s_sum[t];
            double r = (double)ri.u * total;
            for (int t = 0; t < (int)blockDim.x; t++) {
                if (!(r < acc + s_sum[t])) {
                    acc += s_sum[t];
                    continue;
                }
                int64_t tlo = t * cs, thi = tlo + cs < V ? tlo + cs : V;
                for (int64_t i = tlo; i < thi; i++) {
                    acc += exp((double)(x[i] / T - mx));
                    if (r < acc) {
                        ids[row] = (int32_t)i;
                        return;
                    }
                }
                break; /* rounding: keep the argmax, like the CPU code */
            }
        }
        return;
    }
    if (tid == 0) {
        double total = 0.0;
        for (int t = 0; t < (int)blockDim.x; t++) total += s_sum[t];
        totals[row] = total;
    }
    /* radix select: the largest key K with #(key >= K) >= n */
    uint32_t prefix = 0;
    for (int bit = 31; bit >= 0; bit--) {
        uint32_t trial = prefix | (1u << bit);
        int c = 0;
        for (int64_t i = tid; i < V; i += blockDim.x) c += order_key(x[i]) >= trial;
        if (mm_cuda_block_sum(c) >= ri.n) prefix = trial;
    }
    if (tid == 0) s_count = 0;
    for (int i = tid; i < SAMPLE_CAP; i += blockDim.x) s_logit[i] = -INFINITY, s_id[i] = INT32_MAX;
    __syncthreads();
    for (int64_t i = tid; i < V; i += blockDim.x)
        if (order_key(x[i]) >= prefix) {
            int at = atomicAdd(&s_count, 1);
            if (at < SAMPLE_CAP) s_logit[at] = x[i], s_id[at] = (int32_t)i;
        }
    __syncthreads();
    if (s_count > SAMPLE_CAP) { /* too many ties at the threshold: the host decides */
        if (tid == 0) overflow[row] = 1;
        return;
    }
    for (int size = 2; size <= SAMPLE_CAP; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < SAMPLE_CAP; i += blockDim.x) {
                int j = i ^ stride;
                if (j <= i) continue;
                bool up = (i & size) == 0, before = cand_before(s_logit[i], s_id[i], s_logit[j], s_id[j]);
                if (up != before) {
                    float tl = s_logit[i];
                    int32_t ti = s_id[i];
                    s_logit[i] = s_logit[j], s_id[i] = s_id[j];
                    s_logit[j] = tl, s_id[j] = ti;
                }
            }
            __syncthreads();
        }
    for (int i = tid; i < ri.n; i += blockDim.x) cands[row * SAMPLE_CAP + i] = {s_logit[i], s_id[i]};
    if (tid == 0) overflow[row] = 0;
}

/* The CPU code's nucleus walk over sorted candidates c[0..n) (k: the row's top-k, V
 * when off; total: the full-vocabulary mass, used when k == V). 0 when the answer is
 * not known from the candidates: the nucleus does not close within n < k of them, or
 * a top-k above the cap (n < k < V) whose mass, the walk's denominator, is unknown. */
static int nucleus_pick(const cand *c, int64_t n, int64_t k, int64_t V, double total_full, float top_p, float T,
                        float u, int32_t *pick) {
    if (k < V && n < k) return 0;
    float mx = c[0].logit / T;
    double total = 0.0, cum = 0.0;
    if (k == V) total = total_full;
    else
        for (int64_t i = 0; i < n; i++) total += exp((double)(c[i].logit / T - mx));
    int64_t keep = 0;
    for (; keep < n; keep++) {
        if (keep > 0 && cum >= top_p * total) break;
        cum += exp((double)(c[keep].logit / T - mx));
    }
    if (keep == n && n < k && cum < top_p * total) return 0;
    double r = (double)u * cum, acc = 0.0;
    *pick = c[keep - 1].id;
    for (int64_t i = 0; i < keep; i++) {
        acc += exp((double)(c[i].logit / T - mx));
        if (r < acc) {
            *pick = c[i].id;
            break;
        }
    }
    return 1;
}

mm_status mm_cuda_sample(mm_backend *be, const float *logits, int64_t M, int64_t V, const mm_sampling *params,
                         uint64_t *rng, int32_t *out) {
    if (M <= 0) return MM_OK;
    if (V <= 0 || V > INT32_MAX || M > 65535) return MM_ERROR(MM_ERR_INVALID, "sample: %lld rows of %lld", (long long)M, (long long)V);
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    row_info *info_h;
    void *info_d;
    CHECK(mm_cuda_meta_alloc(be, (size_t)M * sizeof(row_info), (void **)&info_h, &info_d));
    int any_nucleus = 0;
    uint64_t *rng_before = (uint64_t *)malloc((size_t)M * sizeof(uint64_t));
    CHECK(CHECK_ALLOC(rng_before));
    memcpy(rng_before, rng, (size_t)M * sizeof(uint64_t));
    for (int64_t m = 0; m < M; m++) {
        const mm_sampling *p = &params[m];
        int64_t k = p->top_k > 0 && p->top_k < V ? p->top_k : V;
        float top_p = p->top_p > 0.0f && p->top_p < 1.0f ? p->top_p : 1.0f;
        row_info *ri = &info_h[m];
        ri->temperature = p->temperature, ri->u = 0.0f, ri->n = 0;
        ri->kind = p->temperature <= 0.0f ? KIND_GREEDY : (k == V && top_p >= 1.0f) ? KIND_PLAIN : KIND_NUCLEUS;
        if (ri->kind != KIND_GREEDY) ri->u = mm_rng_uniform(&rng[m]);
        if (ri->kind == KIND_NUCLEUS) ri->n = (int32_t)(k < SAMPLE_CAP ? k : SAMPLE_CAP), any_nucleus = 1;
    }
    mm_status s = mm_cuda_meta_push(be, info_h, info_d, (size_t)M * sizeof(row_info));
    /* device results: ids [M], overflow [M], totals [M] (double), cands [M, CAP] */
    size_t n_ids = (size_t)M * 4, n_tot = (size_t)M * 8, n_cand = any_nucleus ? (size_t)M * SAMPLE_CAP * sizeof(cand) : 0;
    size_t res_bytes = 2 * n_ids + n_tot;
    char *dev = NULL;
    if (s == MM_OK) s = mm_cuda_scratch(be, ((res_bytes + 255) & ~(size_t)255) + n_cand, (void **)&dev);
    if (s == MM_OK && c->out_cap < res_bytes + n_cand) {
        cudaFreeHost(c->out_host);
        c->out_host = NULL, c->out_cap = 0;
        cudaError_t e = cudaMallocHost((void **)&c->out_host, res_bytes + n_cand);
        if (e != cudaSuccess) s = MM_ERROR(MM_ERR_NOMEM, "CUDA cudaMallocHost(%zu): %s", res_bytes + n_cand, cudaGetErrorString(e));
        else c->out_cap = res_bytes + n_cand;
    }
    if (s != MM_OK) {
        free(rng_before);
        return s;
    }
    double *tot_d = (double *)dev; /* 8-byte aligned first */
    int32_t *ids_d = (int32_t *)(dev + n_tot), *ovf_d = ids_d + M;
    cand *cand_d = (cand *)(dev + ((res_bytes + 255) & ~(size_t)255));
    sample_kernel<<<(unsigned)M, SAMPLE_THREADS, 0, c->stream>>>(logits, V, (const row_info *)info_d, ids_d, ovf_d,
                                                                tot_d, cand_d);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpyAsync(c->out_host, dev, res_bytes, cudaMemcpyDeviceToHost, c->stream);
    if (e == cudaSuccess && n_cand) e = cudaMemcpyAsync(c->out_host + res_bytes, cand_d, n_cand, cudaMemcpyDeviceToHost, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
        free(rng_before);
        return MM_ERROR(MM_ERR_INTERNAL, "CUDA sample: %s", cudaGetErrorString(e));
    }
    const double *tot_h = (const double *)c->out_host;
    const int32_t *ids_h = (const int32_t *)(c->out_host + n_tot), *ovf_h = ids_h + M;
    const cand *cand_h = (const cand *)(c->out_host + res_bytes);
    for (int64_t m = 0; m < M && s == MM_OK; m++) {
        const row_info *ri = &info_h[m];
        out[m] = ids_h[m];
        if (ri->kind != KIND_NUCLEUS) continue;
        const mm_sampling *p = &params[m];
        int64_t k = p->top_k > 0 && p->top_k < V ? p->top_k : V;
        float top_p = p->top_p > 0.0f && p->top_p < 1.0f ? p->top_p : 1.0f;
        if (!ovf_h[m] && nucleus_pick(cand_h + m * SAMPLE_CAP, ri->n, k, V, tot_h[m], top_p, ri->temperature, ri->u, &out[m]))
            continue;
        /* slow path: this row on the CPU, from the generator state before our draw */
        float *row = (float *)malloc((size_t)V * sizeof(float));
        if (!row) s = MM_ERROR(MM_ERR_NOMEM, "sample: host row of %lld", (long long)V);
        if (s == MM_OK) {
            cudaError_t e2 = cudaMemcpy(row, logits + m * V, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost);
            if (e2 != cudaSuccess) s = MM_ERROR(MM_ERR_INTERNAL, "CUDA sample row download: %s", cudaGetErrorString(e2));
        }
        if (s == MM_OK) {
            rng[m] = rng_before[m];
            s = mm_cpu_sample(be, row, 1, V, p, &rng[m], &out[m]);
        }
        free(row);
    }
    free(rng_before);
    return s;
}
