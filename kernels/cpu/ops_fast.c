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
#include "vec16.h"
#include "vmath.h"

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
    if (w->dtype == MM_DTYPE_I8) return mm_cpu_q8_matmul(be, w, x, y, M);
    mm_dnnl *d = mm_cpu_ctx(be)->dnnl;
    return d ? mm_dnnl_matmul(d, w, x, y, M) : mm_cpu_rows_matmul(be, w, x, y, M);
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

/* ---- paged attention ----
 * One task is (row, kv head): the offsets of the row's keys are worked out once (no
 * division per key) and serve K and V of every query head of the group. Per query head:
 * scores of 16 keys at a time (lane t = q . k_t: per-lane partial sums over the head dims,
 * then a fixed reduction tree), an exp2 softmax in vectors, and O = sum_j p_j v_j with
 * two accumulator sets (even / odd keys). The order of every sum depends only on the
 * row's key count and head_dim, so a row's bits depend on nothing else in the batch (the
 * rows of a prefill chunk included). Decode reads a cold cache (all layers' K and V and the weights go
 * by between two steps), so each task prefetches the next task's K and V rows a key at a
 * time beside its own arithmetic: measured on the 110m preset at batch 64, attention fell
 * from 7.1 to 4.5 ms per step at 1 thread (a burst of prefetches per task: 7.1; none: 11.9). */

/* off[j] = start of key j's head row in the cache, j < n; off[n .. n16) repeat key n-1. */
static inline __attribute__((always_inline)) void key_offsets(const mm_attn_row *row, int32_t kvh,
                                                              const mm_attn_shape *s, int32_t n16, int64_t *off) {
    int32_t n = row->n_keys, bs = s->block_size;
    for (int32_t j = 0, b = 0; j < n; b++) {
        int64_t base = ((int64_t)row->block_table[b] * s->n_kv_heads + kvh) * bs * s->head_dim;
        for (int32_t i = 0; i < bs && j < n; i++, j++) off[j] = base + (int64_t)i * s->head_dim;
    }
    for (int32_t j = n; j < n16; j++) off[j] = off[n - 1];
}

static inline __attribute__((always_inline)) const void *kv_at(const void *cache, int bf16, int64_t at) {
    return bf16 ? (const void *)((const uint16_t *)cache + at) : (const void *)((const float *)cache + at);
}

/* Prefetch hint for one head row (hd values) starting at element at. */
static inline __attribute__((always_inline)) void prefetch_row(const void *cache, int bf16, int64_t at, int32_t hd) {
    const char *p = kv_at(cache, bf16, at);
    int32_t bytes = hd * (bf16 ? 2 : 4);
    for (int32_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
}

/* sc[0 .. 16) = q . k_t * c for the 16 keys at off[0 .. 16), q and k of hd values. */
static inline __attribute__((always_inline)) void scores16(const float *q, const void *k_cache, int bf16,
                                                           const int64_t *off, int32_t hd, float c, float *sc) {
    v16 acc[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) acc[t] = (v16){0};
    for (int32_t d = 0; d < hd; d += 16) {
        int32_t w = hd - d < 16 ? hd - d : 16;
        v16 qd;
        v16_load(q + d, 0, w, &qd);
#pragma GCC unroll 16
        for (int t = 0; t < 16; t++) {
            v16 kd;
            v16_load(kv_at(k_cache, bf16, off[t] + d), bf16, w, &kd);
            acc[t] += qd * kd;
        }
    }
    v16 r;
    v16_sum16(acc, &r);
    r *= c;
    memcpy(sc, &r, sizeof r);
}

/* sc[j] = 2^(scale log2(e) q . k_j - max) for the n keys at off (n16 = n rounded up to
 * 16 slots; the pad slots get 0); returns 1 / sum_j sc[j]. With pf, the rows of pf at
 * pf_off[0 .. n16) are prefetched along the way. */
static inline __attribute__((always_inline)) float softmax_head(const float *q, const void *k_cache, int bf16,
                                                                const int64_t *off, int32_t n, int32_t hd,
                                                                float scale, float *sc, const void *pf,
                                                                const int64_t *pf_off) {
    const float c = scale * 1.4426950408889634f; /* log2 units: exp -> exp2 */
    const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    int32_t n16 = (n + 15) & ~15;
    v16 mx = (v16){0} - INFINITY, sum = (v16){0};
    for (int32_t j = 0; j < n16; j += 16) { /* pad slots repeat key n-1: the max is unchanged */
        v16 x;
        scores16(q, k_cache, bf16, off + j, hd, c, sc + j);
        if (pf)
            for (int t = 0; t < 16; t++) prefetch_row(pf, bf16, pf_off[j + t], hd);
        memcpy(&x, sc + j, sizeof x);
        vmax_into(&mx, &x);
    }
    float m = mx[0];
    for (int i = 1; i < 16; i++) m = mx[i] > m ? mx[i] : m;
    for (int32_t j = 0; j < n16; j += 16) {
        v16 x;
        memcpy(&x, sc + j, sizeof x);
        x -= m;
        exp2_neg(&x);
        x = (v16)((v16i)x & (lane + j < n));
        memcpy(sc + j, &x, sizeof x);
        sum += x;
    }
    return 1.0f / v16_hsum(&sum);
}

/* o[0 .. w) = inv * sum_{j < n} p[j] v_j[d0 ..], w <= 128: even keys into one set of
 * accumulators, odd keys into the other, added at the end. With pf, the rows (hd values)
 * of pf at pf_off[0 .. n & ~1) are prefetched along the way. */
static inline __attribute__((always_inline)) void values_slab(const float *p, const void *v_cache, int bf16,
                                                              const int64_t *off, int32_t n, int32_t d0, int32_t w,
                                                              float inv, float *o, const void *pf,
                                                              const int64_t *pf_off, int32_t hd) {
    v16 a0[8], a1[8];
    int32_t nv = (w + 15) / 16;
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) a0[c] = a1[c] = (v16){0};
    int32_t j = 0;
    for (; j + 2 <= n; j += 2) {
        const void *v0 = kv_at(v_cache, bf16, off[j] + d0), *v1 = kv_at(v_cache, bf16, off[j + 1] + d0);
        float p0 = p[j], p1 = p[j + 1];
        if (pf) prefetch_row(pf, bf16, pf_off[j], hd), prefetch_row(pf, bf16, pf_off[j + 1], hd);
#pragma GCC unroll 8
        for (int32_t c = 0; c < nv; c++) {
            int32_t cw = w - 16 * c < 16 ? w - 16 * c : 16;
            v16 x0, x1;
            v16_load(kv_at(v0, bf16, 16 * c), bf16, cw, &x0);
            v16_load(kv_at(v1, bf16, 16 * c), bf16, cw, &x1);
            a0[c] += p0 * x0;
            a1[c] += p1 * x1;
        }
    }
    if (j < n) {
        const void *v0 = kv_at(v_cache, bf16, off[j] + d0);
#pragma GCC unroll 8
        for (int32_t c = 0; c < nv; c++) {
            int32_t cw = w - 16 * c < 16 ? w - 16 * c : 16;
            v16 x0;
            v16_load(kv_at(v0, bf16, 16 * c), bf16, cw, &x0);
            a0[c] += p[j] * x0;
        }
    }
#pragma GCC unroll 8
    for (int32_t c = 0; c < nv; c++) {
        int32_t cw = w - 16 * c < 16 ? w - 16 * c : 16;
        v16 r = (a0[c] + a1[c]) * inv;
        v16_store(o + 16 * c, cw, &r);
    }
}

/* The query heads [q, q + group * hd) of one row into o, given the offsets off of its
 * keys; sc [n16] is this thread's scratch. next (NULL: none) is the row of the task to
 * come: the offsets of its keys for kv head next_kvh go to next_off (at least n16 of
 * them), and their K and V head rows are prefetched a key at a time beside this task's own
 * (K with the first head's scores, V with its weighted sum), so their memory latency hides
 * behind this arithmetic. hd is a compile-time constant in the common instantiations. */
static inline __attribute__((always_inline)) void attend_heads(const float *q, const void *k_cache,
                                                               const void *v_cache, const mm_attn_shape *s, int bf16,
                                                               int32_t hd, const mm_attn_row *row, const int64_t *off,
                                                               const mm_attn_row *next, int32_t next_kvh,
                                                               int64_t *next_off, float *sc, float *o) {
    int32_t n = row->n_keys, group = s->n_heads / s->n_kv_heads, n16 = (n + 15) & ~15;
    int32_t nn = next ? next->n_keys : 0, nn16 = (nn + 15) & ~15;
    if (next) key_offsets(next, next_kvh, s, nn16 > n16 ? nn16 : n16, next_off);
    for (int32_t g = 0; g < group; g++) {
        const void *pk = next && g == 0 ? k_cache : NULL, *pv = next && g == 0 ? v_cache : NULL;
        float inv = softmax_head(q + (int64_t)g * hd, k_cache, bf16, off, n, hd, s->scale, sc, pk, next_off);
        for (int32_t j = n16; pk && j < nn; j++) prefetch_row(pk, bf16, next_off[j], hd);
        for (int32_t d0 = 0; d0 < hd; d0 += 128)
            values_slab(sc, v_cache, bf16, off, n, d0, hd - d0 < 128 ? hd - d0 : 128, inv, o + (int64_t)g * hd + d0,
                        d0 == 0 ? pv : NULL, next_off, hd);
        for (int32_t j = n & ~1; pv && j < nn; j++) prefetch_row(pv, bf16, next_off[j], hd);
    }
}

/* One task (a row with n_keys > 0, a kv head) given its key offsets; see attend_heads. */
MM_VEC_CLONES static void attend_task(const float *q, const void *k_cache, const void *v_cache,
                                      const mm_attn_shape *s, const mm_attn_row *row, const int64_t *off,
                                      const mm_attn_row *next, int32_t next_kvh, int64_t *next_off, float *sc,
                                      float *o) {
#define ATTEND(bf16, hd) attend_heads(q, k_cache, v_cache, s, bf16, hd, row, off, next, next_kvh, next_off, sc, o)
    int32_t hd = s->head_dim;
    if (s->kv_dtype == MM_DTYPE_BF16) {
        if (hd == 64) ATTEND(1, 64);
        else if (hd == 128) ATTEND(1, 128);
        else ATTEND(1, hd);
    } else {
        if (hd == 64) ATTEND(0, 64);
        else if (hd == 128) ATTEND(0, 128);
        else ATTEND(0, hd);
    }
#undef ATTEND
}

#define ATTN_CHUNK 16 /* consecutive tasks per scheduling unit: the prefetch reaches within one */

mm_status mm_cpu_fast_attention(mm_backend *be, const float *q, const void *k_cache, const void *v_cache,
                                const mm_attn_row *rows, int64_t M, const mm_attn_shape *s, float *out) {
    if (s->kv_dtype != MM_DTYPE_F32 && s->kv_dtype != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "KV cache dtype %s", mm_dtype_name(s->kv_dtype));
    int32_t max_keys = 1;
    for (int64_t m = 0; m < M; m++) max_keys = rows[m].n_keys > max_keys ? rows[m].n_keys : max_keys;
    /* per thread: scores [n16] f32, then key offsets of this task and the next [2][n16] int64 */
    size_t n16 = ((size_t)max_keys + 15) & ~(size_t)15, per_thread = 5 * n16;
    float *scratch;
    CHECK(mm_cpu_scratch(be, (size_t)be->n_threads * per_thread * sizeof(float), (void **)&scratch));
    int64_t KVH = s->n_kv_heads, tasks = M * KVH, n_chunks = (tasks + ATTN_CHUNK - 1) / ATTN_CHUNK;
    int64_t group_floats = (int64_t)(s->n_heads / s->n_kv_heads) * s->head_dim;
#pragma omp parallel for num_threads(be->n_threads) schedule(dynamic, 1) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        float *sc = scratch + (size_t)omp_get_thread_num() * per_thread;
        int64_t *off = (int64_t *)(sc + n16), *next_off = off + n16;
        int64_t end = (c + 1) * ATTN_CHUNK < tasks ? (c + 1) * ATTN_CHUNK : tasks;
        int have_off = 0; /* off holds task t's key offsets (worked out by task t - 1) */
        for (int64_t t = c * ATTN_CHUNK; t < end; t++) { /* task t: row t / KVH, kv head t % KVH */
            const mm_attn_row *row = &rows[t / KVH], *next = t + 1 < end ? &rows[(t + 1) / KVH] : NULL;
            if (row->n_keys <= 0) { /* no keys: an empty weighted sum */
                memset(out + t * group_floats, 0, (size_t)group_floats * sizeof(float));
                have_off = 0;
                continue;
            }
            if (!have_off) key_offsets(row, (int32_t)(t % KVH), s, (int32_t)n16, off);
            if (next && next->n_keys <= 0) next = NULL;
            attend_task(q + t * group_floats, k_cache, v_cache, s, row, off, next, (int32_t)((t + 1) % KVH), next_off,
                        sc, out + t * group_floats);
            int64_t *done = off;
            off = next_off, next_off = done, have_off = next != NULL;
        }
    }
    return MM_OK;
}

/* gate[i] = silu(gate[i]) * up[i] for 16 values: with t = e^-|g| (never overflows),
 * silu(g) = g / (1 + t) for g >= 0 and g t / (1 + t) below. A short span goes through
 * the same vector code (zero padded), so a value's bits never depend on where n ends. */
static inline __attribute__((always_inline)) void silu_mul16(float *gate, const float *up, int32_t w) {
    v16 g, u, t;
    v16_load(gate, 0, w, &g);
    v16_load(up, 0, w, &u);
    const v16i sign = (v16i){0} + (int32_t)0x80000000;
    t = (v16)((v16i)g | sign) * 1.4426950408889634f; /* -|g| log2(e) */
    exp2_neg(&t);
    v16i neg = g < 0;
    v16 num = (v16)((neg & (v16i)(g * t)) | (~neg & (v16i)g));
    v16 r = num / (1.0f + t) * u;
    v16_store(gate, w, &r);
}

MM_VEC_CLONES static void silu_mul_span(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) silu_mul16(gate + i, up + i, n - i < 16 ? (int32_t)(n - i) : 16);
}

mm_status mm_cpu_fast_silu_mul(mm_backend *be, float *gate, const float *up, int64_t n) {
    const int64_t per = 16384; /* a multiple of 16 */
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i += per) silu_mul_span(gate + i, up + i, n - i < per ? n - i : per);
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

MM_VEC_CLONES static void gelu_span(float *x, int64_t n, int tanh_approx) {
    if (tanh_approx)
        for (int64_t i = 0; i < n; i++) x[i] = gelu_tanh_poly(x[i]);
    else
        for (int64_t i = 0; i < n; i++) x[i] = gelu_erf_poly(x[i]);
}

mm_status mm_cpu_fast_gelu(mm_backend *be, float *x, int64_t n, int tanh_approx) {
    const int64_t per = 16384;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i += per) gelu_span(x + i, n - i < per ? n - i : per, tanh_approx);
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
