/* Per-op timing wrappers for a backend: see op_profile.h. */
#include "bench/op_profile.h"

#include <stdio.h>

#include "bench/bench_util.h"
#include "kernels/cuda/backend_cuda.h"

enum { OP_EMBED, OP_MATMUL, OP_RMSNORM, OP_ROPE, OP_KV_STORE, OP_ATTENTION, OP_SILU_MUL, OP_ADD, OP_COPY, OP_SAMPLE,
       OP_COUNT };
static const char *const OP_NAMES[OP_COUNT] = {"embed",    "matmul",    "rmsnorm", "rope", "kv_store",
                                               "attention", "silu_mul", "add",     "copy", "sample"};

static struct {
    const mm_backend_ops *real; /* the backend's own table */
    mm_backend_ops wrapped;
    mm_backend shadow;          /* be with its own ops: what mm_backend_cuda_sync recognises */
    double seconds[OP_COUNT];
    long calls[OP_COUNT];
} P;

static double tic(void) {
    mm_backend_cuda_sync(&P.shadow);
    return mm_now_s();
}

static void toc(int op, double t0) {
    mm_backend_cuda_sync(&P.shadow);
    P.seconds[op] += mm_now_s() - t0;
    P.calls[op]++;
}

#define TIMED(op, call)                                                                            \
    do {                                                                                           \
        double t0_ = tic();                                                                        \
        mm_status s_ = (call);                                                                     \
        toc(op, t0_);                                                                              \
        return s_;                                                                                 \
    } while (0)

static mm_status w_embed(mm_backend *be, const mm_tensor *t, const int32_t *ids, int64_t M, float *y) {
    TIMED(OP_EMBED, P.real->embed(be, t, ids, M, y));
}
static mm_status w_matmul(mm_backend *be, const mm_tensor *w, const float *x, float *y, int64_t M) {
    TIMED(OP_MATMUL, P.real->matmul(be, w, x, y, M));
}
static mm_status w_rmsnorm(mm_backend *be, const float *x, const float *w, float *y, int64_t M, int64_t D, float eps) {
    TIMED(OP_RMSNORM, P.real->rmsnorm(be, x, w, y, M, D, eps));
}
static mm_status w_rope(mm_backend *be, float *x, const int32_t *pos, const float *f, int64_t M, int32_t H, int32_t hd) {
    TIMED(OP_ROPE, P.real->rope(be, x, pos, f, M, H, hd));
}
static mm_status w_kv_store(mm_backend *be, void *kc, void *vc, const float *k, const float *v, const int32_t *slots,
                            int64_t M, const mm_attn_shape *s) {
    TIMED(OP_KV_STORE, P.real->kv_store(be, kc, vc, k, v, slots, M, s));
}
static mm_status w_attention(mm_backend *be, const float *q, const void *kc, const void *vc, const mm_attn_row *rows,
                             int64_t M, const mm_attn_shape *s, float *out) {
    TIMED(OP_ATTENTION, P.real->attention(be, q, kc, vc, rows, M, s, out));
}
static mm_status w_silu_mul(mm_backend *be, float *gate, const float *up, int64_t n) {
    TIMED(OP_SILU_MUL, P.real->silu_mul(be, gate, up, n));
}
static mm_status w_add(mm_backend *be, float *y, const float *x, int64_t n) { TIMED(OP_ADD, P.real->add(be, y, x, n)); }
static mm_status w_copy(mm_backend *be, void *dst, const void *src, size_t bytes) {
    TIMED(OP_COPY, P.real->copy(be, dst, src, bytes));
}
static mm_status w_sample(mm_backend *be, const float *lg, int64_t M, int64_t V, const mm_sampling *p, uint64_t *rng,
                          int32_t *out) {
    TIMED(OP_SAMPLE, P.real->sample(be, lg, M, V, p, rng, out));
}

void mm_op_profile_begin(mm_backend *be) {
    P.real = be->ops;
    P.shadow = *be;
    P.wrapped = *be->ops;
    P.wrapped.embed = w_embed, P.wrapped.matmul = w_matmul, P.wrapped.rmsnorm = w_rmsnorm, P.wrapped.rope = w_rope;
    P.wrapped.kv_store = w_kv_store, P.wrapped.attention = w_attention, P.wrapped.silu_mul = w_silu_mul;
    P.wrapped.add = w_add, P.wrapped.copy = w_copy, P.wrapped.sample = w_sample;
    for (int i = 0; i < OP_COUNT; i++) P.seconds[i] = 0, P.calls[i] = 0;
    be->ops = &P.wrapped;
}

void mm_op_profile_end(mm_backend *be) {
    if (P.real) be->ops = P.real;
    P.real = NULL;
}

int mm_op_profile_json(double per, char *buf, size_t n) {
    double all = 0;
    long calls = 0;
    size_t k = (size_t)snprintf(buf, n, "{");
    for (int i = 0; i < OP_COUNT && k < n; i++) {
        all += P.seconds[i], calls += P.calls[i];
        k += (size_t)snprintf(buf + k, n - k, "\"%s\": %.3f, ", OP_NAMES[i], P.seconds[i] * 1e3 / per);
    }
    if (k < n) k += (size_t)snprintf(buf + k, n - k, "\"all_ops\": %.3f, \"calls\": %.1f}", all * 1e3 / per, calls / per);
    return (int)(k < n ? k : n - 1);
}
