/* Flash-decoding style attention. A block (4 warps) takes one query row, a group of
 * query heads that share one KV head, and one split of ATT_CHUNK keys; each warp
 * streams every 4th key of the split (a head's key is contiguous, so a warp reads it
 * coalesced), keeps an online softmax per query head in registers, and the warps are
 * merged in a fixed order. Rows whose keys span several splits are merged by a second
 * kernel. Split boundaries depend only on the row's own key count, so a row's output
 * never depends on the batch it shares (batch-invariant). The same kernel serves the
 * paged cache [n_blocks, n_kv_heads, block_size, head_dim] (f32 or bf16) through block
 * tables, and dense [batch, T, H, hd] tensors.
 * That is what decode rows need. Many rows against the same keys (a prefill chunk of
 * MM_CUDA_ATTN_GEMM_MIN_ROWS or more rows of one sequence, dense attention with that
 * many queries) go through the score matrix and cuBLAS instead (attention_gemm.cu),
 * which reuses each K/V tile across rows; those results depend on the GEMM shapes, so
 * only the row-at-a-time path is batch-invariant. */
#include "attention.cuh"

#include "attention_gemm.cuh"

#include <stdlib.h>

#define ATT_WARPS 4
#define ATT_CHUNK 256                  /* keys per split */
#define ATT_PART_MAX ((size_t)64 << 20) /* split partials per launch, bytes */
#define GEMM_SCORES_MAX ((size_t)256 << 20) /* score matrix per GEMM pass, bytes */
#define GEMM_ROWS_CAUSAL 256 /* rows per pass of a causal group: later passes see more keys */
#define GEMM_KV_MAX ((size_t)256 << 20) /* gathered K + V of one group; longer groups take the kernel */

typedef struct {
    const float *q;          /* [M, H, hd] */
    float *out;              /* [M, H, hd] */
    const void *k, *v;       /* paged cache or dense [batch, Tk, H, hd] */
    int bf16;                /* cache element type */
    int32_t H, KVH, hd, group, heads_per_block;
    float scale;
    const int32_t *meta;     /* paged: [M, 2] = (n_keys, offset into tables), n_keys < 0: row done elsewhere
                              * (the GEMM path, which reads its key count from the second field); NULL: dense */
    const int32_t *tables;   /* paged: flattened block tables */
    int32_t bs;
    int64_t Tq, Tk;          /* dense */
    int64_t row0;            /* first row of this launch */
    int32_t n_splits;
    float *part;             /* [rows, H, n_splits, hd + 2]: acc[hd], max, sum */
} attn_args;

__device__ __forceinline__ int64_t key_at(const attn_args &a, int64_t row, int kvh, int64_t j, int32_t toff) {
    if (a.meta) {
        int64_t blk = a.tables[toff + j / a.bs];
        return ((blk * a.KVH + kvh) * a.bs + j % a.bs) * a.hd;
    }
    return (((row / a.Tq) * a.Tk + j) * a.KVH + kvh) * a.hd;
}

__device__ __forceinline__ float kv_load(const void *p, int bf16, int64_t i) {
    return bf16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}

/* G_MAX query heads per block, head_dim <= 32 * D_MAX. */
template <int G_MAX, int D_MAX> __global__ void __launch_bounds__(ATT_WARPS * 32) attn_kernel(attn_args a) {
    const int split = blockIdx.x, h0 = blockIdx.y * a.heads_per_block, kvh = h0 / a.group;
    const int64_t row = a.row0 + blockIdx.z, lrow = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, G = a.heads_per_block, hd = a.hd;
    int32_t n_keys = a.meta ? a.meta[2 * row] : (int32_t)a.Tk, toff = a.meta ? a.meta[2 * row + 1] : 0;
    if (n_keys < 0) return; /* the whole block: before any barrier */
    int64_t j0 = (int64_t)split * ATT_CHUNK, j1 = j0 + ATT_CHUNK < n_keys ? j0 + ATT_CHUNK : n_keys;
    extern __shared__ float sh[];
    float *q_s = sh;              /* [G, hd] */
    float *wp = sh + G * hd;      /* [ATT_WARPS, G, hd + 2] */
    for (int e = threadIdx.x; e < G * hd; e += blockDim.x) q_s[e] = a.q[(row * a.H + h0) * hd + e];
    __syncthreads();
    float m[G_MAX], l[G_MAX], acc[G_MAX][D_MAX];
#pragma unroll
    for (int g = 0; g < G_MAX; g++) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < D_MAX; i++) acc[g][i] = 0.0f;
    }
    for (int64_t j = j0 + warp; j < j1; j += ATT_WARPS) {
        int64_t at = key_at(a, row, kvh, j, toff);
        float kd[D_MAX], vd[D_MAX];
#pragma unroll
        for (int i = 0; i < D_MAX; i++) {
            int d = lane + 32 * i;
            kd[i] = d < hd ? kv_load(a.k, a.bf16, at + d) : 0.0f;
            vd[i] = d < hd ? kv_load(a.v, a.bf16, at + d) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < G_MAX; g++) {
            if (g >= G) break;
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < D_MAX; i++) {
                int d = lane + 32 * i;
                if (d < hd) dot += q_s[g * hd + d] * kd[i];
            }
            for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            float s = dot * a.scale, mn = fmaxf(m[g], s);
            float corr = expf(m[g] - mn), p = expf(s - mn);
            l[g] = l[g] * corr + p;
#pragma unroll
            for (int i = 0; i < D_MAX; i++) acc[g][i] = acc[g][i] * corr + p * vd[i];
            m[g] = mn;
        }
    }
#pragma unroll
    for (int g = 0; g < G_MAX; g++) {
        if (g >= G) break;
        float *w = wp + (warp * G + g) * (hd + 2);
#pragma unroll
        for (int i = 0; i < D_MAX; i++)
            if (lane + 32 * i < hd) w[lane + 32 * i] = acc[g][i];
        if (lane == 0) w[hd] = m[g], w[hd + 1] = l[g];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * hd; e += blockDim.x) {
        int g = e / hd, d = e % hd;
        float mx = -INFINITY, L = 0.0f, A = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) mx = fmaxf(mx, wp[(w * G + g) * (hd + 2) + hd]);
        for (int w = 0; w < ATT_WARPS; w++) {
            const float *pw = wp + (w * G + g) * (hd + 2);
            if (pw[hd + 1] == 0.0f) continue;
            float f = expf(pw[hd] - mx);
            L += pw[hd + 1] * f;
            A += pw[d] * f;
        }
        int64_t h = h0 + g;
        if (a.n_splits == 1) {
            a.out[(row * a.H + h) * hd + d] = L > 0.0f ? A / L : 0.0f;
        } else {
            float *p = a.part + ((lrow * a.H + h) * a.n_splits + split) * (int64_t)(hd + 2);
            p[d] = A;
            if (d == 0) p[hd] = mx, p[hd + 1] = L;
        }
    }
}

/* grid (rows * H): merges the splits of one (row, head) in split order. */
__global__ void attn_merge_kernel(attn_args a) {
    int64_t lrow = blockIdx.x / a.H, h = blockIdx.x % a.H, row = a.row0 + lrow;
    if (a.meta && a.meta[2 * row] < 0) return;
    const float *p = a.part + (lrow * a.H + h) * a.n_splits * (int64_t)(a.hd + 2);
    float mx = -INFINITY;
    for (int s = 0; s < a.n_splits; s++) mx = fmaxf(mx, p[s * (a.hd + 2) + a.hd]);
    for (int d = threadIdx.x; d < a.hd; d += blockDim.x) {
        float L = 0.0f, A = 0.0f;
        for (int s = 0; s < a.n_splits; s++) {
            const float *ps = p + s * (a.hd + 2);
            if (ps[a.hd + 1] == 0.0f) continue;
            float f = expf(ps[a.hd] - mx);
            L += ps[a.hd + 1] * f;
            A += ps[d] * f;
        }
        a.out[(row * a.H + h) * a.hd + d] = L > 0.0f ? A / L : 0.0f;
    }
}

/* Launches over rows [0, M) in chunks that keep the split partials bounded. */
static mm_status attn_launch(mm_backend *be, attn_args a, int64_t M, int32_t max_keys) {
    if (M <= 0) return MM_OK;
    if (a.hd > 512) return MM_ERROR(MM_ERR_UNSUPPORTED, "attention: head_dim %d > 512", a.hd);
    if (a.H % a.KVH) return MM_ERROR(MM_ERR_INVALID, "attention: %d heads not a multiple of %d KV heads", a.H, a.KVH);
    cudaStream_t st = mm_cuda_ctx_of(be)->stream;
    /* grouped heads share K/V loads when they fit the small-head kernel */
    int grouped = a.hd <= 128 && a.group <= 8;
    a.heads_per_block = grouped ? a.group : 1;
    a.n_splits = max_keys > ATT_CHUNK ? (max_keys + ATT_CHUNK - 1) / ATT_CHUNK : 1;
    size_t part_row = (size_t)a.H * a.n_splits * (a.hd + 2) * sizeof(float);
    int64_t chunk = a.n_splits > 1 ? (int64_t)(ATT_PART_MAX / part_row) : M;
    if (chunk < 1) chunk = 1;
    if (chunk > 65535) chunk = 65535;
    if (a.n_splits > 1) CHECK(mm_cuda_scratch(be, (size_t)(chunk < M ? chunk : M) * part_row, (void **)&a.part));
    size_t shmem = (size_t)a.heads_per_block * a.hd * sizeof(float) * (1 + ATT_WARPS) + ATT_WARPS * a.heads_per_block * 2 * sizeof(float);
    for (int64_t r0 = 0; r0 < M; r0 += chunk) {
        int64_t rows = M - r0 < chunk ? M - r0 : chunk;
        a.row0 = r0;
        dim3 grid((unsigned)a.n_splits, (unsigned)(a.H / a.heads_per_block), (unsigned)rows);
        if (grouped) attn_kernel<8, 4><<<grid, ATT_WARPS * 32, shmem, st>>>(a);
        else attn_kernel<1, 16><<<grid, ATT_WARPS * 32, shmem, st>>>(a);
        CUDA_LAUNCH_CHECK();
        if (a.n_splits > 1) {
            attn_merge_kernel<<<(unsigned)(rows * a.H), 128, 0, st>>>(a);
            CUDA_LAUNCH_CHECK();
        }
    }
    return MM_OK;
}

/* Rows [r0, r1) of one sequence (block table tab_d on the device, key counts at
 * keys_d[2 * r], r relative to r0) through the score matrix: K/V gathered once for the
 * group's longest row, then passes of at most GEMM_ROWS_CAUSAL rows, each against the
 * keys its longest row sees. */
static mm_status attention_group_gemm(mm_backend *be, const float *q, const void *k_cache, const void *v_cache,
                                      const mm_attn_row *rows, int64_t r0, int64_t r1, const mm_attn_shape *s,
                                      const int32_t *tab_d, const int32_t *keys_d, int32_t need, float *out) {
    const int64_t H = s->n_heads, KVH = s->n_kv_heads, hd = s->head_dim, kv = KVH * (int64_t)need * hd;
    int64_t pass = (int64_t)(GEMM_SCORES_MAX / mm_cuda_attn_gemm_scores_bytes((int32_t)H, 1, need > 0 ? need : 1));
    if (pass > GEMM_ROWS_CAUSAL) pass = GEMM_ROWS_CAUSAL;
    if (pass < 1) pass = 1;
    float *kc;
    CHECK(mm_cuda_scratch(be, (size_t)(2 * kv) * sizeof(float) + mm_cuda_attn_gemm_scores_bytes((int32_t)H, pass, need),
                          (void **)&kc));
    float *vc = kc + kv, *S = vc + kv;
    int bf16 = s->kv_dtype == MM_DTYPE_BF16;
    CHECK(mm_cuda_kv_gather(be, k_cache, bf16, tab_d, s->block_size, (int32_t)KVH, (int32_t)hd, need, kc));
    CHECK(mm_cuda_kv_gather(be, v_cache, bf16, tab_d, s->block_size, (int32_t)KVH, (int32_t)hd, need, vc));
    for (int64_t p0 = r0; p0 < r1; p0 += pass) {
        int64_t p1 = p0 + pass < r1 ? p0 + pass : r1;
        int32_t tk = 0;
        for (int64_t r = p0; r < p1; r++) tk = rows[r].n_keys > tk ? rows[r].n_keys : tk;
        if (tk == 0) { /* rows that see no keys: zeros, as the reference (and no 0-sized GEMMs) */
            CUDA_CHECK(cudaMemsetAsync(out + p0 * H * hd, 0, (size_t)((p1 - p0) * H * hd) * sizeof(float),
                                       mm_cuda_ctx_of(be)->stream));
            continue;
        }
        mm_attn_gemm g = {};
        g.q = q + p0 * H * hd, g.ldq = H * hd, g.sq = hd;
        g.k = kc, g.v = vc, g.ldk = hd, g.sk = (int64_t)need * hd;
        g.out = out + p0 * H * hd, g.ldo = H * hd, g.so = hd;
        g.H = (int32_t)H, g.KVH = (int32_t)KVH, g.hd = (int32_t)hd, g.scale = s->scale;
        g.n = p1 - p0, g.Tk = tk, g.n_keys = keys_d + 2 * (p0 - r0), g.n_keys_stride = 2;
        CHECK(mm_cuda_attn_gemm(be, &g, S));
    }
    return MM_OK;
}

/* Rows [m, end) share rows[m]'s block table (one sequence's rows are consecutive); *need
 * is their longest key count, how far the table is read. Returns end. */
static int64_t group_end(const mm_attn_row *rows, int64_t m, int64_t M, int32_t *need) {
    int64_t g = m;
    *need = 0;
    for (; g < M && rows[g].block_table == rows[m].block_table; g++)
        if (rows[g].n_keys > *need) *need = rows[g].n_keys;
    return g;
}

mm_status mm_cuda_attention(mm_backend *be, const float *q, const void *k_cache, const void *v_cache,
                            const mm_attn_row *rows, int64_t M, const mm_attn_shape *s, float *out) {
    if (s->kv_dtype != MM_DTYPE_F32 && s->kv_dtype != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "KV cache dtype %s", mm_dtype_name(s->kv_dtype));
    if (M <= 0) return MM_OK;
    if (M > INT32_MAX / 4) return MM_ERROR(MM_ERR_UNSUPPORTED, "attention over %lld rows", (long long)M);
    if (s->n_heads <= 0 || s->n_kv_heads <= 0 || s->n_heads % s->n_kv_heads)
        return MM_ERROR(MM_ERR_INVALID, "attention: %d heads not a positive multiple of %d KV heads", s->n_heads,
                        s->n_kv_heads);
    /* meta [M, 2] then the block tables; consecutive rows of one sequence share theirs */
    for (int64_t m = 0; m < M; m++)
        if (rows[m].n_keys < 0) return MM_ERROR(MM_ERR_INVALID, "attention row %lld: %d keys", (long long)m, rows[m].n_keys);
    int64_t n_tab = 0; /* each group of rows sharing a table needs it up to its longest row */
    for (int64_t m = 0, g = 0; m < M; m = g) {
        int32_t need;
        g = group_end(rows, m, M, &need);
        n_tab += (need + s->block_size - 1) / s->block_size;
    }
    size_t bytes = (size_t)(2 * M + n_tab) * sizeof(int32_t);
    int32_t *h, *d;
    CHECK(mm_cuda_meta_alloc(be, bytes, (void **)&h, (void **)&d));
    int64_t off = 0, kernel_rows = 0;
    int32_t max_keys = 0; /* over the rows the kernel takes */
    for (int64_t m = 0, g = 0; m < M; m = g) {
        int32_t need;
        g = group_end(rows, m, M, &need);
        int32_t nb = (need + s->block_size - 1) / s->block_size;
        for (int32_t i = 0; i < nb; i++) {
            if (rows[m].block_table[i] < 0) return MM_ERROR(MM_ERR_INVALID, "attention row %lld: block id %d", (long long)m, rows[m].block_table[i]);
            h[2 * M + off + i] = rows[m].block_table[i];
        }
        int gemm = g - m >= MM_CUDA_ATTN_GEMM_MIN_ROWS && need > 0 &&
                   (size_t)2 * s->n_kv_heads * need * s->head_dim * sizeof(float) <= GEMM_KV_MAX;
        for (int64_t r = m; r < g; r++) {
            h[2 * r] = gemm ? -1 : rows[r].n_keys;
            h[2 * r + 1] = gemm ? rows[r].n_keys : (int32_t)off;
            if (!gemm && rows[r].n_keys > max_keys) max_keys = rows[r].n_keys;
        }
        if (!gemm) kernel_rows += g - m;
        off += nb;
    }
    CHECK(mm_cuda_meta_push(be, h, d, bytes));
    if (kernel_rows > 0) {
        attn_args a = {};
        a.q = q, a.out = out, a.k = k_cache, a.v = v_cache, a.bf16 = s->kv_dtype == MM_DTYPE_BF16;
        a.H = s->n_heads, a.KVH = s->n_kv_heads, a.hd = s->head_dim, a.group = s->n_heads / s->n_kv_heads;
        a.scale = s->scale, a.meta = d, a.tables = d + 2 * M, a.bs = s->block_size;
        CHECK(attn_launch(be, a, M, max_keys));
    }
    off = 0;
    for (int64_t m = 0, g = 0; m < M && kernel_rows < M; m = g) {
        int32_t need;
        g = group_end(rows, m, M, &need);
        if (h[2 * m] < 0) /* this group was given to the GEMMs above */
            CHECK(attention_group_gemm(be, q, k_cache, v_cache, rows, m, g, s, d + 2 * M + off, d + 2 * m + 1, need, out));
        off += (need + s->block_size - 1) / s->block_size;
    }
    return MM_OK;
}

mm_status mm_cuda_attention_dense(mm_backend *be, const float *q, const float *k, const float *v, int64_t batch,
                                  int64_t Tq, int64_t Tk, int32_t n_heads, int32_t head_dim, float scale, float *out) {
    if (Tk > INT32_MAX) return MM_ERROR(MM_ERR_UNSUPPORTED, "attention over %lld keys", (long long)Tk);
    if (n_heads <= 0) return MM_ERROR(MM_ERR_INVALID, "attention: %d heads", n_heads);
    if (Tq >= MM_CUDA_ATTN_GEMM_MIN_ROWS && Tk > 0) {
        const int64_t H = n_heads, hd = head_dim;
        int64_t pass = (int64_t)(GEMM_SCORES_MAX / mm_cuda_attn_gemm_scores_bytes(n_heads, 1, Tk));
        if (pass > Tq) pass = Tq;
        if (pass < 1) pass = 1;
        float *S;
        CHECK(mm_cuda_scratch(be, mm_cuda_attn_gemm_scores_bytes(n_heads, pass, Tk), (void **)&S));
        for (int64_t b = 0; b < batch; b++)
            for (int64_t p0 = 0; p0 < Tq; p0 += pass) {
                mm_attn_gemm g = {};
                g.q = q + (b * Tq + p0) * H * hd, g.ldq = H * hd, g.sq = hd;
                g.k = k + b * Tk * H * hd, g.v = v + b * Tk * H * hd, g.ldk = H * hd, g.sk = hd;
                g.out = out + (b * Tq + p0) * H * hd, g.ldo = H * hd, g.so = hd;
                g.H = n_heads, g.KVH = n_heads, g.hd = head_dim, g.scale = scale;
                g.n = Tq - p0 < pass ? Tq - p0 : pass, g.Tk = Tk;
                CHECK(mm_cuda_attn_gemm(be, &g, S));
            }
        return MM_OK;
    }
    attn_args a = {};
    a.q = q, a.out = out, a.k = k, a.v = v, a.bf16 = 0;
    a.H = n_heads, a.KVH = n_heads, a.hd = head_dim, a.group = 1, a.scale = scale;
    a.Tq = Tq, a.Tk = Tk;
    return attn_launch(be, a, batch * Tq, (int32_t)Tk);
}
