/* Fast CPU ops: oneDNN for GEMM, OpenMP across independent outputs (rows, heads),
 * vector loops inside. Batch invariance holds by construction: each output row is
 * computed by one thread with a code path that depends only on that row's data, never
 * on M, other rows or the thread count. Must stay numerically close to ops_ref.c. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "cpu_ops.h"

#define MM_VEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

/* Inlined into their (cloned) callers so each ISA level gets its own vector code. */
static inline __attribute__((always_inline)) float dot_f32(const float *a, const float *b, int32_t n) {
    float acc[16] = {0};
    int32_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[i + l] * b[i + l];
    float s = 0.0f;
    for (int l = 0; l < 16; l++) s += acc[l];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}


mm_status mm_cpu_fast_embed(mm_backend *be, const mm_tensor *table, const int32_t *ids, int64_t M, float *y) {
    int64_t V = table->shape[0], D = table->shape[1];
    for (int64_t m = 0; m < M; m++)
        if (ids[m] < 0 || ids[m] >= V) return MM_ERROR(MM_ERR_INVALID, "token id %d out of range [0, %lld)", ids[m], (long long)V);
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * D > 32768)
    for (int64_t m = 0; m < M; m++) mm_cpu_load_row(table->dtype, table->data, ids[m], D, y + m * D);
    return MM_OK;
}

mm_status mm_cpu_fast_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    return mm_dnnl_matmul(mm_cpu_ctx(be)->dnnl, w, x, y, M);
}

MM_VEC_CLONES static float sum_squares(const float *x, int32_t n) { return dot_f32(x, x, n); }

mm_status mm_cpu_fast_rmsnorm(mm_backend *be, const float *x, const float *w, float *y, int64_t M, int64_t D,
                              float eps) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * D > 65536)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D;
        float inv = 1.0f / sqrtf(sum_squares(xr, (int32_t)D) / (float)D + eps);
        float *yr = y + m * D;
        for (int64_t d = 0; d < D; d++) yr[d] = w[d] * (xr[d] * inv);
    }
    return MM_OK;
}

mm_status mm_cpu_fast_rope(mm_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t M,
                           int32_t n_heads, int32_t head_dim) {
    int32_t half = head_dim / 2;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M > 16)
    for (int64_t m = 0; m < M; m++) {
        float c[half], s[half];
        for (int32_t i = 0; i < half; i++) {
            float angle = (float)pos[m] * inv_freq[i];
            c[i] = cosf(angle);
            s[i] = sinf(angle);
        }
        for (int32_t h = 0; h < n_heads; h++) {
            float *v = x + (m * n_heads + h) * head_dim;
            for (int32_t i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
    return MM_OK;
}

/* Element i of a K or V head row, widened to f32 in a register (bf16 is the top half of
 * an f32, so the widening is exact). bf16 is a compile-time constant in each caller. */
static inline __attribute__((always_inline)) float kv_elem(const void *row, int bf16, int32_t i) {
    if (!bf16) return ((const float *)row)[i];
    uint32_t u = (uint32_t)((const uint16_t *)row)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Start of the head row of key j (the tail of a group of four repeats key n-1). */
static inline __attribute__((always_inline)) const void *kv_row(const void *cache, int bf16, const mm_attn_row *row,
                                                                int32_t j, int32_t kvh, const mm_attn_shape *s) {
    int64_t at = mm_kv_offset(row->block_table, j < row->n_keys ? j : row->n_keys - 1, kvh, s);
    return bf16 ? (const void *)((const uint16_t *)cache + at) : (const void *)((const float *)cache + at);
}

/* q . k for four keys at once: four independent accumulator chains keep the FMA
 * units busy where one short dot product would wait on its own latency. */
static inline __attribute__((always_inline)) void dot4(const float *q, const void *const k[4], int bf16, int32_t n,
                                                       float out[4]) {
    float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};
    int32_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) {
            a0[l] += q[i + l] * kv_elem(k[0], bf16, i + l);
            a1[l] += q[i + l] * kv_elem(k[1], bf16, i + l);
            a2[l] += q[i + l] * kv_elem(k[2], bf16, i + l);
            a3[l] += q[i + l] * kv_elem(k[3], bf16, i + l);
        }
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int l = 0; l < 16; l++) s0 += a0[l], s1 += a1[l], s2 += a2[l], s3 += a3[l];
    for (; i < n; i++) {
        s0 += q[i] * kv_elem(k[0], bf16, i), s1 += q[i] * kv_elem(k[1], bf16, i);
        s2 += q[i] * kv_elem(k[2], bf16, i), s3 += q[i] * kv_elem(k[3], bf16, i);
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* One (row, head): scores over the row's keys, softmax, weighted sum of values. Keys go
 * in groups of four (the tail group repeats its last key with weight 0); the order of
 * every sum depends only on this row's key count, never on the batch or the cache dtype
 * path (bf16 values widen exactly). */
static inline __attribute__((always_inline)) void attend_body(const float *qv, const void *k_cache,
                                                              const void *v_cache, int bf16, const mm_attn_row *row,
                                                              int32_t kvh, const mm_attn_shape *s, float *scores,
                                                              float *o) {
    int32_t hd = s->head_dim, n = row->n_keys;
    float mx = -INFINITY;
    for (int32_t j = 0; j < n; j += 4) {
        const void *k[4];
        for (int t = 0; t < 4; t++) k[t] = kv_row(k_cache, bf16, row, j + t, kvh, s);
        float d[4];
        dot4(qv, k, bf16, hd, d);
        for (int t = 0; t < 4 && j + t < n; t++) {
            scores[j + t] = d[t] * s->scale;
            mx = scores[j + t] > mx ? scores[j + t] : mx;
        }
    }
    float sum = 0.0f;
    for (int32_t j = 0; j < n; j++) {
        scores[j] = expf(scores[j] - mx);
        sum += scores[j];
    }
    float inv = 1.0f / sum;
    memset(o, 0, (size_t)hd * sizeof(float));
    for (int32_t j = 0; j < n; j += 4) {
        const void *v[4];
        float p[4];
        for (int t = 0; t < 4; t++) {
            v[t] = kv_row(v_cache, bf16, row, j + t, kvh, s);
            p[t] = j + t < n ? scores[j + t] * inv : 0.0f;
        }
        for (int32_t i = 0; i < hd; i++)
            o[i] += p[0] * kv_elem(v[0], bf16, i) + p[1] * kv_elem(v[1], bf16, i) + p[2] * kv_elem(v[2], bf16, i) +
                    p[3] * kv_elem(v[3], bf16, i);
    }
}

MM_VEC_CLONES static void attend_one(const float *qv, const void *k_cache, const void *v_cache,
                                     const mm_attn_row *row, int32_t kvh, const mm_attn_shape *s, float *scores,
                                     float *o) {
    if (s->kv_dtype == MM_DTYPE_BF16)
        attend_body(qv, k_cache, v_cache, 1, row, kvh, s, scores, o);
    else
        attend_body(qv, k_cache, v_cache, 0, row, kvh, s, scores, o);
}

/* Rows of one sequence that share a bf16 cache within a step (a prefill chunk) would each
 * widen the same keys again; such a run gets its keys widened once into an f32 copy laid
 * out as one block [n_kv_heads, n_keys, head_dim]. The f32 values are exactly those the
 * per-row path computes, and the order of every sum is unchanged, so the results are
 * bit-identical either way (batch invariance holds). */
typedef struct {
    const void *k, *v;     /* caches this row reads */
    mm_attn_row row;       /* its block table and key count in them */
    mm_attn_shape shape;   /* their geometry and dtype */
} attn_source;

static const int32_t single_block[1] = {0};

static mm_status plan_sources(mm_backend *be, const void *k_cache, const void *v_cache, const mm_attn_row *rows,
                              int64_t M, const mm_attn_shape *s, attn_source *src, float *widened) {
    int32_t KVH = s->n_kv_heads, hd = s->head_dim;
    for (int64_t m = 0, off = 0; m < M;) {
        int64_t end = m + 1;
        int32_t n = rows[m].n_keys;
        while (end < M && rows[end].block_table == rows[m].block_table) n = rows[end].n_keys > n ? rows[end].n_keys : n, end++;
        if (s->kv_dtype != MM_DTYPE_BF16 || end - m < 2) {
            for (; m < end; m++) src[m] = (attn_source){k_cache, v_cache, rows[m], *s};
            continue;
        }
        float *wk = widened + off, *wv = wk + (size_t)KVH * n * hd;
        off += 2 * (int64_t)KVH * n * hd;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if ((int64_t)KVH * n * hd > 65536)
        for (int64_t hj = 0; hj < (int64_t)KVH * n; hj++) {
            int32_t h = (int32_t)(hj / n), j = (int32_t)(hj % n);
            int64_t at = mm_kv_offset(rows[m].block_table, j, h, s);
            for (int32_t d = 0; d < hd; d++) {
                wk[hj * hd + d] = mm_bf16_to_f32(((const uint16_t *)k_cache)[at + d]);
                wv[hj * hd + d] = mm_bf16_to_f32(((const uint16_t *)v_cache)[at + d]);
            }
        }
        mm_attn_shape ws = *s;
        ws.block_size = n, ws.kv_dtype = MM_DTYPE_F32;
        for (; m < end; m++) src[m] = (attn_source){wk, wv, {single_block, rows[m].n_keys}, ws};
    }
    return MM_OK;
}

mm_status mm_cpu_fast_attention(mm_backend *be, const float *q, const void *k_cache, const void *v_cache,
                                const mm_attn_row *rows, int64_t M, const mm_attn_shape *s, float *out) {
    if (s->kv_dtype != MM_DTYPE_F32 && s->kv_dtype != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "KV cache dtype %s", mm_dtype_name(s->kv_dtype));
    int32_t H = s->n_heads, group = s->n_heads / s->n_kv_heads;
    int32_t max_keys = 1;
    int64_t widen_floats = 0; /* what plan_sources widens: runs of >= 2 rows on a bf16 cache */
    for (int64_t m = 0; m < M;) {
        int64_t end = m + 1;
        int32_t n = rows[m].n_keys;
        while (end < M && rows[end].block_table == rows[m].block_table) n = rows[end].n_keys > n ? rows[end].n_keys : n, end++;
        max_keys = n > max_keys ? n : max_keys;
        if (s->kv_dtype == MM_DTYPE_BF16 && end - m >= 2) widen_floats += 2 * (int64_t)s->n_kv_heads * n * s->head_dim;
        m = end;
    }
    size_t per_thread = (size_t)max_keys; /* scores */
    float *scratch;
    CHECK(mm_cpu_scratch(be, ((size_t)be->n_threads * per_thread + (size_t)widen_floats) * sizeof(float),
                         (void **)&scratch));
    attn_source *src = malloc((size_t)(M > 0 ? M : 1) * sizeof *src);
    CHECK(CHECK_ALLOC(src));
    mm_status st = plan_sources(be, k_cache, v_cache, rows, M, s, src, scratch + (size_t)be->n_threads * per_thread);
    if (st == MM_OK) {
#pragma omp parallel for num_threads(be->n_threads) schedule(dynamic, 4) if (M * H > 1)
        for (int64_t mh = 0; mh < M * H; mh++) {
            int64_t m = mh / H;
            int32_t h = (int32_t)(mh % H);
            float *sc = scratch + (size_t)omp_get_thread_num() * per_thread;
            attend_one(q + mh * s->head_dim, src[m].k, src[m].v, &src[m].row, h / group, &src[m].shape, sc,
                       out + mh * s->head_dim);
        }
    }
    free(src);
    return st;
}

mm_status mm_cpu_fast_silu_mul(mm_backend *be, float *gate, const float *up, int64_t n) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    return MM_OK;
}

mm_status mm_cpu_fast_add(mm_backend *be, float *y, const float *x, int64_t n) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
    return MM_OK;
}

mm_status mm_cpu_fast_softmax(mm_backend *be, const float *x, float *y, int64_t M, int64_t N) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M > 1)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * N;
        float *yr = y + m * N;
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t i = 0; i < N; i++) mx = xr[i] > mx ? xr[i] : mx;
        for (int64_t i = 0; i < N; i++) {
            yr[i] = expf(xr[i] - mx);
            sum += yr[i];
        }
        float inv = 1.0f / sum;
        for (int64_t i = 0; i < N; i++) yr[i] *= inv;
    }
    return MM_OK;
}

/* ---- encoder / decoder ops ---- */

MM_VEC_CLONES static void layernorm_row(const float *x, const float *w, const float *b, float *y, int64_t D, float eps) {
    float mean = 0.0f, var = 0.0f;
    for (int64_t d = 0; d < D; d++) mean += x[d];
    mean /= (float)D;
    for (int64_t d = 0; d < D; d++) var += (x[d] - mean) * (x[d] - mean);
    float inv = 1.0f / sqrtf(var / (float)D + eps);
    for (int64_t d = 0; d < D; d++) y[d] = (x[d] - mean) * inv * (w ? w[d] : 1.0f) + (b ? b[d] : 0.0f);
}

mm_status mm_cpu_fast_layernorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t M,
                                int64_t D, float eps) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * D > 65536)
    for (int64_t m = 0; m < M; m++) layernorm_row(x + m * D, w, b, y + m * D, D, eps);
    return MM_OK;
}

mm_status mm_cpu_fast_add_bias(mm_backend *be, float *y, const float *bias, int64_t M, int64_t N) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * N > 65536)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) y[m * N + n] += bias[n];
    return MM_OK;
}

mm_status mm_cpu_fast_gelu(mm_backend *be, float *x, int64_t n, int tanh_approx) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) x[i] = mm_gelu_scalar(x[i], tanh_approx);
    return MM_OK;
}

mm_status mm_cpu_fast_l2norm(mm_backend *be, const float *x, float *y, int64_t M, int64_t D, float eps) {
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * D > 65536)
    for (int64_t m = 0; m < M; m++) {
        float norm = sqrtf(sum_squares(x + m * D, (int32_t)D));
        norm = norm > eps ? norm : eps;
        for (int64_t d = 0; d < D; d++) y[m * D + d] = x[m * D + d] / norm;
    }
    return MM_OK;
}
