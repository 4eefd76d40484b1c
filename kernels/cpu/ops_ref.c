/* Reference CPU ops: the plainest loops that state each op's maths, single-threaded,
 * accumulating in f32 in index order. Every other backend is checked against these.
 * Not for speed. */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"

float mm_cpu_load_elem(mm_dtype dt, const void *data, int64_t i) {
    switch (dt) {
    case MM_DTYPE_F32: return ((const float *)data)[i];
    case MM_DTYPE_BF16: return mm_bf16_to_f32(((const uint16_t *)data)[i]);
    case MM_DTYPE_F16: return mm_f16_to_f32(((const uint16_t *)data)[i]);
    default: return NAN;
    }
}

void mm_cpu_load_row(mm_dtype dt, const void *data, int64_t r, int64_t cols, float *out) {
    if (dt == MM_DTYPE_F32) {
        memcpy(out, (const float *)data + r * cols, (size_t)cols * sizeof(float));
        return;
    }
    for (int64_t c = 0; c < cols; c++) out[c] = mm_cpu_load_elem(dt, data, r * cols + c);
}

mm_status mm_cpu_ref_embed(mm_backend *be, const mm_tensor *table, const int32_t *ids, int64_t M, float *y) {
    int64_t V = table->shape[0], D = table->shape[1];
    for (int64_t m = 0; m < M; m++) {
        if (ids[m] < 0 || ids[m] >= V) return MM_ERROR(MM_ERR_INVALID, "token id %d out of range [0, %lld)", ids[m], (long long)V);
        mm_cpu_load_row(table->dtype, table->data, ids[m], D, y + m * D);
    }
    return MM_OK;
}

mm_status mm_cpu_ref_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    if (w->dtype == MM_DTYPE_I8) return mm_cpu_q8_matmul_ref(be, w, x, y, M);
    int64_t N = w->shape[0], K = w->shape[1];
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++) acc += x[m * K + k] * mm_cpu_load_elem(w->dtype, w->data, n * K + k);
            y[m * N + n] = acc;
        }
    }
    return MM_OK;
}

mm_status mm_cpu_ref_rmsnorm(mm_backend *be, const float *x, const float *w, float *y, int64_t M, int64_t D,
                             float eps) {
    for (int64_t m = 0; m < M; m++) {
        float ss = 0.0f;
        for (int64_t d = 0; d < D; d++) ss += x[m * D + d] * x[m * D + d];
        float inv = 1.0f / sqrtf(ss / (float)D + eps);
        for (int64_t d = 0; d < D; d++) y[m * D + d] = w[d] * (x[m * D + d] * inv);
    }
    return MM_OK;
}

mm_status mm_cpu_ref_rope(mm_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t M,
                          int32_t n_heads, int32_t head_dim) {
    int32_t half = head_dim / 2;
    for (int64_t m = 0; m < M; m++) {
        for (int32_t h = 0; h < n_heads; h++) {
            float *v = x + (m * n_heads + h) * head_dim;
            for (int32_t i = 0; i < half; i++) {
                float angle = (float)pos[m] * inv_freq[i];
                float c = cosf(angle), s = sinf(angle);
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
    return MM_OK;
}

mm_status mm_cpu_ref_attention(mm_backend *be, const float *q, const void *k_cache, const void *v_cache,
                               const mm_attn_row *rows, int64_t M, const mm_attn_shape *s, float *out) {
    int32_t H = s->n_heads, KVH = s->n_kv_heads, hd = s->head_dim;
    int32_t group = H / KVH;
    for (int64_t m = 0; m < M; m++) {
        int32_t n = rows[m].n_keys;
        float *scores = be->ops->alloc(be, (size_t)(n > 0 ? n : 1) * sizeof(float));
        if (!scores) return MM_ERROR(MM_ERR_NOMEM, "attention scores [%d]", n);
        for (int32_t h = 0; h < H; h++) {
            const float *qv = q + (m * H + h) * hd;
            int32_t kvh = h / group;
            float mx = -INFINITY;
            for (int32_t j = 0; j < n; j++) {
                int64_t at = mm_kv_offset(rows[m].block_table, j, kvh, s);
                float dot = 0.0f;
                for (int32_t d = 0; d < hd; d++) dot += qv[d] * mm_cpu_load_elem(s->kv_dtype, k_cache, at + d);
                scores[j] = dot * s->scale;
                if (scores[j] > mx) mx = scores[j];
            }
            float sum = 0.0f;
            for (int32_t j = 0; j < n; j++) {
                scores[j] = expf(scores[j] - mx);
                sum += scores[j];
            }
            float *o = out + (m * H + h) * hd;
            for (int32_t d = 0; d < hd; d++) o[d] = 0.0f;
            for (int32_t j = 0; j < n; j++) {
                int64_t at = mm_kv_offset(rows[m].block_table, j, kvh, s);
                float p = scores[j] / sum;
                for (int32_t d = 0; d < hd; d++) o[d] += p * mm_cpu_load_elem(s->kv_dtype, v_cache, at + d);
            }
        }
        be->ops->dealloc(be, scores);
    }
    return MM_OK;
}

mm_status mm_cpu_ref_silu_mul(mm_backend *be, float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    return MM_OK;
}

mm_status mm_cpu_ref_add(mm_backend *be, float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
    return MM_OK;
}

mm_status mm_cpu_ref_softmax(mm_backend *be, const float *x, float *y, int64_t M, int64_t N) {
    for (int64_t m = 0; m < M; m++) {
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t i = 0; i < N; i++) mx = fmaxf(mx, x[m * N + i]);
        for (int64_t i = 0; i < N; i++) {
            y[m * N + i] = expf(x[m * N + i] - mx);
            sum += y[m * N + i];
        }
        for (int64_t i = 0; i < N; i++) y[m * N + i] /= sum;
    }
    return MM_OK;
}

mm_status mm_cpu_ref_layernorm(mm_backend *be, const float *x, const float *w, const float *b, float *y, int64_t M,
                               int64_t D, float eps) {
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D;
        float mean = 0.0f, var = 0.0f;
        for (int64_t d = 0; d < D; d++) mean += xr[d];
        mean /= (float)D;
        for (int64_t d = 0; d < D; d++) var += (xr[d] - mean) * (xr[d] - mean);
        float inv = 1.0f / sqrtf(var / (float)D + eps);
        for (int64_t d = 0; d < D; d++)
            y[m * D + d] = (xr[d] - mean) * inv * (w ? w[d] : 1.0f) + (b ? b[d] : 0.0f);
    }
    return MM_OK;
}

mm_status mm_cpu_ref_add_bias(mm_backend *be, float *y, const float *bias, int64_t M, int64_t N) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) y[m * N + n] += bias[n];
    return MM_OK;
}

mm_status mm_cpu_ref_gelu(mm_backend *be, float *x, int64_t n, int tanh_approx) {
    for (int64_t i = 0; i < n; i++) x[i] = mm_gelu_scalar(x[i], tanh_approx);
    return MM_OK;
}

mm_status mm_cpu_ref_l2norm(mm_backend *be, const float *x, float *y, int64_t M, int64_t D, float eps) {
    for (int64_t m = 0; m < M; m++) {
        float ss = 0.0f;
        for (int64_t d = 0; d < D; d++) ss += x[m * D + d] * x[m * D + d];
        float norm = fmaxf(sqrtf(ss), eps);
        for (int64_t d = 0; d < D; d++) y[m * D + d] = x[m * D + d] / norm;
    }
    return MM_OK;
}

mm_status mm_cpu_ref_attention_dense(mm_backend *be, const float *q, const float *k, const float *v, int64_t batch,
                                     int64_t Tq, int64_t Tk, int32_t H, int32_t hd, float scale, float *out) {
    float *scores = be->ops->alloc(be, (size_t)(Tk > 0 ? Tk : 1) * sizeof(float));
    if (!scores) return MM_ERROR(MM_ERR_NOMEM, "attention scores [%lld]", (long long)Tk);
    for (int64_t bt = 0; bt < batch; bt++) {
        for (int64_t i = 0; i < Tq; i++) {
            for (int32_t h = 0; h < H; h++) {
                const float *qv = q + ((bt * Tq + i) * H + h) * hd;
                float mx = -INFINITY, sum = 0.0f;
                for (int64_t j = 0; j < Tk; j++) {
                    const float *kv = k + ((bt * Tk + j) * H + h) * hd;
                    float dot = 0.0f;
                    for (int32_t d = 0; d < hd; d++) dot += qv[d] * kv[d];
                    scores[j] = dot * scale;
                    mx = fmaxf(mx, scores[j]);
                }
                for (int64_t j = 0; j < Tk; j++) {
                    scores[j] = expf(scores[j] - mx);
                    sum += scores[j];
                }
                float *o = out + ((bt * Tq + i) * H + h) * hd;
                for (int32_t d = 0; d < hd; d++) o[d] = 0.0f;
                for (int64_t j = 0; j < Tk; j++) {
                    const float *vv = v + ((bt * Tk + j) * H + h) * hd;
                    float p = scores[j] / sum;
                    for (int32_t d = 0; d < hd; d++) o[d] += p * vv[d];
                }
            }
        }
    }
    be->ops->dealloc(be, scores);
    return MM_OK;
}
