/* The matmul of q8 weights (common/q8.h: I8 [N, K] with f16 scales per block of 32
 * along K), as llama.cpp's Q8_0 x Q8_0: each activation row is quantized per block of
 * 32 to int8 with an f32 scale (mm_q8_quantize_act, the same integers for both
 * implementations), each block's integer dot product is exact, and the block results
 * are summed in f32 weighted by d_w * d_x.
 *
 * Two implementations with one signature: the reference (plain loops, one f32 sum per
 * output in block order: the truth the unit test compares with) and the AVX2 one
 * (_mm256_maddubs_epi16 on |w| and sign(x, w), _mm256_madd_epi16 to 8 int32 lanes,
 * converted and FMA'd per block into 8 f32 lanes, the lanes added 0..7 at the end).
 * The AVX2 kernel is batch-invariant by construction, as gemm_rows.c: every output runs
 * the same arithmetic whatever M, the tile of rows it falls in or the thread computing
 * it. Threads split the columns (rows of W), tiles of 4 rows of x share each weight load;
 * one kernel serves decode and prefill (measured in bench/llm_cpu against bf16/f32).
 * No AVX-512 VNNI path: the development EPYC has neither (a VNNI kernel would replace the
 * maddubs/madd pair by one vpdpbusd, with the same sign trick). */
#include <immintrin.h>
#include <stdint.h>

#include "common/q8.h"
#include "cpu_backend.h"

#define ROWS 4          /* rows of x per tile */
#define COLS_PER_TASK 8 /* columns of y (rows of W) per unit of thread work */

/* x [M, K] f32 -> scratch: xq [M, K] int8, then xd [M, K/32] f32 (after xq, 64-byte aligned). */
static mm_status quantize_rows(mm_backend *be, const float *x, int64_t M, int64_t K, int8_t **xq, float **xd) {
    size_t q_bytes = ((size_t)(M * K) + 63) & ~(size_t)63;
    void *p;
    CHECK(mm_cpu_scratch(be, q_bytes + (size_t)(M * (K / MM_Q8_BLOCK)) * sizeof(float), &p));
    *xq = p, *xd = (float *)((char *)p + q_bytes);
    for (int64_t m = 0; m < M; m++) mm_q8_quantize_act(x + m * K, K, *xq + m * K, *xd + m * (K / MM_Q8_BLOCK));
    return MM_OK;
}

static mm_status check_weight(const mm_tensor *w) {
    if (w->dtype != MM_DTYPE_I8 || !w->scales || w->shape[1] % MM_Q8_BLOCK)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "q8 matmul: weight dtype %s, K %lld, scales %s", mm_dtype_name(w->dtype),
                        (long long)w->shape[1], w->scales ? "present" : "missing");
    return MM_OK;
}

mm_status mm_cpu_q8_matmul_ref(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    CHECK(check_weight(w));
    const int64_t N = w->shape[0], K = w->shape[1], nb = K / MM_Q8_BLOCK;
    if (M <= 0) return MM_OK;
    int8_t *xq;
    float *xd;
    CHECK(quantize_rows(be, x, M, K, &xq, &xd));
    const int8_t *wq = w->data;
    const uint16_t *wd = w->scales;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t s = 0;
                for (int i = 0; i < MM_Q8_BLOCK; i++)
                    s += (int32_t)wq[n * K + b * MM_Q8_BLOCK + i] * xq[m * K + b * MM_Q8_BLOCK + i];
                acc += (float)s * (mm_f16_to_f32(wd[n * nb + b]) * xd[m * nb + b]);
            }
            y[m * N + n] = acc;
        }
    return MM_OK;
}

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* out[r * out_stride] = row n of W . row r of x, r < R (R a constant at each call site). */
static inline __attribute__((always_inline)) AVX2 void dot_tile(const int R, const int8_t *xq, const float *xd,
                                                                const int8_t *wq, const uint16_t *wd, int64_t K,
                                                                int64_t n, float *out, int64_t out_stride) {
    const int64_t nb = K / MM_Q8_BLOCK;
    const int8_t *wr = wq + n * K;
    const uint16_t *dr = wd + n * nb;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[ROWS] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    /* d_w * d_x of 8 blocks at a time into sc (vector multiply, exactly the scalar
     * product), read back by broadcast loads: one load-port uop per block and row instead
     * of a multiply and a shuffle */
    float sc[ROWS][8] __attribute__((aligned(32)));
    int64_t b = 0;
    for (; b < nb; b += 8) {
        const int nb8 = nb - b < 8 ? (int)(nb - b) : 8;
        if (nb8 == 8) {
            const __m256 dwv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dr + b)));
            for (int r = 0; r < R; r++) _mm256_store_ps(sc[r], _mm256_mul_ps(dwv, _mm256_loadu_ps(xd + r * nb + b)));
        } else {
            for (int j = 0; j < nb8; j++)
                for (int r = 0; r < R; r++) sc[r][j] = _cvtsh_ss(dr[b + j]) * xd[r * nb + b + j];
        }
        for (int j = 0; j < nb8; j++) {
            /* 2 KiB ahead in the weight stream, one line per 2 blocks: decode (M = 1) 1.05-1.37x in
             * interleaved A/Bs on 150 MB of weights (1 KiB and 4 KiB alike); M = 16 unchanged */
            if (j % 2 == 0) _mm_prefetch((const char *)(wr + (b + j) * MM_Q8_BLOCK) + 2048, _MM_HINT_T0);
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + (b + j) * MM_Q8_BLOCK));
            const __m256i aw = _mm256_sign_epi8(wv, wv); /* |w| as unsigned bytes (|-128| = 128 still fits) */
            for (int r = 0; r < R; r++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + r * K + (b + j) * MM_Q8_BLOCK));
                /* |w| * sign(x, w) = w * x; |x| <= 127 so a pair sum stays below 2^15 */
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&sc[r][j]), acc[r]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        float l[8], s = 0.0f;
        _mm256_storeu_ps(l, acc[r]);
        for (int i = 0; i < 8; i++) s += l[i];
        out[r * out_stride] = s;
    }
}

AVX2 static void q8_task(const int8_t *xq, const float *xd, const int8_t *wq, const uint16_t *wd, float *y, int64_t M,
                         int64_t K, int64_t N, int64_t n0, int64_t n1) {
    const int64_t nb = K / MM_Q8_BLOCK;
    for (int64_t m = 0; m < M; m += ROWS) {
        int64_t R = M - m < ROWS ? M - m : ROWS;
        const int8_t *xm = xq + m * K;
        const float *dm = xd + m * nb;
        float *ym = y + m * N;
        for (int64_t n = n0; n < n1; n++) {
            switch (R) {
            case 4: dot_tile(4, xm, dm, wq, wd, K, n, ym + n, N); break;
            case 3: dot_tile(3, xm, dm, wq, wd, K, n, ym + n, N); break;
            case 2: dot_tile(2, xm, dm, wq, wd, K, n, ym + n, N); break;
            default: dot_tile(1, xm, dm, wq, wd, K, n, ym + n, N); break;
            }
        }
    }
}

static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

mm_status mm_cpu_q8_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    if (!have_avx2()) return mm_cpu_q8_matmul_ref(be, w, x, y, M);
    CHECK(check_weight(w));
    const int64_t N = w->shape[0], K = w->shape[1];
    if (M <= 0) return MM_OK;
    int8_t *xq;
    float *xd;
    CHECK(quantize_rows(be, x, M, K, &xq, &xd));
    const int64_t tasks = (N + COLS_PER_TASK - 1) / COLS_PER_TASK;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (M * N * K > 65536)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n0 = t * COLS_PER_TASK, n1 = n0 + COLS_PER_TASK < N ? n0 + COLS_PER_TASK : N;
        q8_task(xq, xd, w->data, w->scales, y, M, K, N, n0, n1);
    }
    return MM_OK;
}
