/* bench/llm_cpu: LLaMA throughput on the CPU backend, printed as one JSON object.
 * For the 110m preset (llama2.c's stories110M shapes) in f32, bf16 and q8 (int8
 * weights, common/q8.h), at 1 and 2 threads: prefill tokens/s (one 256-token prompt)
 * and decode tokens/s at batch 1, 16 and 64, each the median of several rounds. The
 * dtypes run interleaved (each round measures every dtype once, in turn), so a noisy
 * shared machine slows them alike; "ratios" are medians of the per-round ratios. Baselines measured in the same run:
 * the streaming memory-read bandwidth (batch-1 decode is compared with weight bytes
 * per token / time) and the GEMM peak of the same backend (prefill FLOP/s against it).
 * Models are written with mm-mkmodel into --workdir (default: a temp dir). */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "common/runtime.h"
#include "kernels/backend.h"
#include "model/llama.h"

#ifndef MM_MKMODEL_PATH
#define MM_MKMODEL_PATH "mm-mkmodel"
#endif

#define REPEATS 5
#define N_DTYPES 3


/* Sum of n floats with 64 independent vector lanes, so loads, not adds, are the limit. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
static float sum_stream(const float *p, size_t n) {
    float acc[64] = {0};
    for (size_t i = 0; i + 64 <= n; i += 64)
        for (int l = 0; l < 64; l++) acc[l] += p[i + l];
    float s = 0;
    for (int l = 0; l < 64; l++) s += acc[l];
    return s;
}

/* Streaming read of a buffer much larger than the caches, GB/s (median). */
static double read_bandwidth(int threads) {
    size_t n = (size_t)1 << 27; /* 128 Mi floats = 512 MiB */
    float *buf = malloc(n * sizeof *buf);
    if (!buf) return 0;
#pragma omp parallel for num_threads(threads)
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023);
    double t[REPEATS];
    volatile float sink = 0;
    for (int r = 0; r < REPEATS; r++) {
        double t0 = mm_now_s();
        float total = 0;
        size_t chunk = n / (size_t)threads;
#pragma omp parallel for num_threads(threads) reduction(+ : total)
        for (int th = 0; th < threads; th++) total += sum_stream(buf + (size_t)th * chunk, chunk);
        sink += total;
        t[r] = (double)(n * sizeof *buf) / (mm_now_s() - t0) * 1e-9;
    }
    free(buf);
    return mm_bench_median(t, REPEATS);
}

/* GEMM peak of this backend: a large matmul in the model's weight dtype, GFLOP/s. */
static double gemm_peak(mm_backend *be, mm_dtype dt) {
    const int64_t M = 512, K = 2048, N = 2048;
    mm_tensor w = {.dtype = dt, .ndim = 2, .shape = {N, K}};
    w.data = calloc((size_t)(N * K), mm_dtype_size(dt));
    if (dt == MM_DTYPE_I8) w.scales = calloc((size_t)(N * K / 32), 2); /* q8: f16 scales per 32 */
    float *x = calloc((size_t)(M * K), 4), *y = calloc((size_t)(M * N), 4);
    for (int64_t i = 0; i < M * K; i++) x[i] = (float)(i % 7) * 0.1f;
    double t[REPEATS];
    be->ops->matmul(be, &w, x, y, M); /* warm-up: primitive creation */
    for (int r = 0; r < REPEATS; r++) {
        double t0 = mm_now_s();
        be->ops->matmul(be, &w, x, y, M);
        t[r] = 2.0 * M * K * N / (mm_now_s() - t0) * 1e-9;
    }
    free(w.data), free((void *)w.scales), free(x), free(y);
    return mm_bench_median(t, REPEATS);
}

typedef struct {
    mm_llama *m;
    mm_kv_cache *kv;
    mm_llama_seq *seqs;
    float *logits;
    int n;
} runner;

static void runner_reset(runner *r) {
    for (int i = 0; i < r->n; i++) mm_kv_seq_release(r->kv, &r->seqs[i].kv);
}

/* Prefill of one prompt of T tokens, tokens/s (one round). */
static double bench_prefill(runner *r, int T) {
    int32_t *toks = malloc((size_t)T * sizeof *toks);
    for (int i = 0; i < T; i++) toks[i] = (i * 7919) % r->m->cfg.vocab_size;
    double t[1];
    for (int rep = 0; rep < 1; rep++) {
        mm_llama_seq *s = &r->seqs[0];
        const int32_t *tp[1] = {toks};
        int32_t cnt[1] = {T};
        double t0 = mm_now_s();
        if (mm_llama_eval(r->m, r->kv, &s, tp, cnt, 1, 0, r->logits) != MM_OK) fprintf(stderr, "%s\n", mm_error_last());
        t[rep] = T / (mm_now_s() - t0);
        runner_reset(r);
    }
    free(toks);
    return t[0];
}

/* B sequences, each prefilled with 32 tokens, then `steps` batched decode steps: tokens/s (one round). */
static double bench_decode(runner *r, int B, int steps) {
    mm_llama_seq *ptrs[B];
    const int32_t *tp[B];
    int32_t cnt[B], prompt[32], next[B];
    for (int i = 0; i < 32; i++) prompt[i] = (i * 31 + 7) % r->m->cfg.vocab_size;
    double t[1];
    for (int rep = 0; rep < 1; rep++) {
        for (int b = 0; b < B; b++) {
            ptrs[b] = &r->seqs[b], tp[b] = prompt, cnt[b] = 32;
            next[b] = (b * 13) % r->m->cfg.vocab_size;
        }
        mm_llama_eval(r->m, r->kv, ptrs, tp, cnt, B, 0, r->logits);
        for (int b = 0; b < B; b++) tp[b] = &next[b], cnt[b] = 1;
        double t0 = mm_now_s();
        for (int s = 0; s < steps; s++)
            if (mm_llama_eval(r->m, r->kv, ptrs, tp, cnt, B, 0, r->logits) != MM_OK) fprintf(stderr, "%s\n", mm_error_last());
        t[rep] = (double)B * steps / (mm_now_s() - t0);
        runner_reset(r);
    }
    return t[0];
}

/* Bytes read per decode step at batch 1: every weight matrix once (+ one embedding row).
 * q8 (I8): 1 byte per weight + a 2-byte scale per 32. */
static double weight_bytes(const mm_llama_config *c, mm_dtype dt) {
    double per_layer = (double)c->dim * c->head_dim * (2.0 * c->n_heads + 2.0 * c->n_kv_heads) + 3.0 * c->dim * c->hidden_dim;
    double head = (double)c->vocab_size * c->dim;
    double per_weight = dt == MM_DTYPE_I8 ? 34.0 / 32.0 : (double)mm_dtype_size(dt);
    return (per_layer * c->n_layers + head) * per_weight + 4.0 * c->dim * (2.0 * c->n_layers + 1);
}

static double flops_per_token(const mm_llama_config *c) {
    double per_layer = (double)c->dim * c->head_dim * (2.0 * c->n_heads + 2.0 * c->n_kv_heads) + 3.0 * c->dim * c->hidden_dim;
    return 2.0 * (per_layer * c->n_layers + (double)c->vocab_size * c->dim);
}

static int ensure_model(const char *dir, const char *dtype) {
    char cfg[4200], cmd[8400];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (access(cfg, R_OK) == 0) return 0;
    snprintf(cmd, sizeof cmd, "%s --preset 110m --dtype %s --out %s >&2", MM_MKMODEL_PATH, dtype, dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    const char *workdir = NULL;
    int quick = 0;
    static const struct option opts[] = {{"workdir", required_argument, 0, 'w'}, {"quick", no_argument, 0, 'q'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'w') workdir = optarg;
        else if (c == 'q') quick = 1;
        else {
            fprintf(stderr, "usage: llm_cpu [--workdir DIR] [--quick]\n");
            return 2;
        }
    }
    char tmp[] = "/tmp/mm-bench-XXXXXX";
    if (!workdir && !(workdir = mkdtemp(tmp))) return 1;
    const char *dtypes[N_DTYPES] = {"f32", "bf16", "q8"};
    const mm_dtype dts[N_DTYPES] = {MM_DTYPE_F32, MM_DTYPE_BF16, MM_DTYPE_I8};
    const int threads[] = {1, 2}, batches[] = {1, 16, 64};
    int steps = quick ? 4 : 16;
    printf("{\n  \"benchmark\": \"llm_cpu\", \"preset\": \"110m\", \"repeats\": %d, \"stat\": \"median\", "
           "\"order\": \"interleaved\",\n", REPEATS);
    printf("  \"read_bandwidth_gbs\": {\"1\": %.2f, \"2\": %.2f},\n", read_bandwidth(1), read_bandwidth(2));
    printf("  \"runs\": [\n");
    mkdir(workdir, 0755);
    char dirs[N_DTYPES][4096];
    for (int d = 0; d < N_DTYPES; d++) {
        snprintf(dirs[d], sizeof dirs[d], "%s/110m-%s", workdir, dtypes[d]);
        if (ensure_model(dirs[d], dtypes[d])) {
            fprintf(stderr, "llm_cpu: could not create %s\n", dirs[d]);
            return 1;
        }
    }
    int first = 1;
    for (int ti = 0; ti < 2; ti++) {
        int nt = threads[ti];
        double bw = read_bandwidth(nt);
        mm_backend *be;
        runner r[N_DTYPES];
        if (mm_backend_cpu_init(nt, &be) != MM_OK) return fprintf(stderr, "llm_cpu: %s\n", mm_error_last()), 1;
        for (int d = 0; d < N_DTYPES; d++) {
            mm_llama *m;
            if (mm_llama_load(dirs[d], be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m) != MM_OK)
                return fprintf(stderr, "llm_cpu: %s\n", mm_error_last()), 1;
            r[d] = (runner){.m = m, .n = 64};
            r[d].seqs = calloc(64, sizeof *r[d].seqs);
            r[d].logits = malloc((size_t)64 * m->cfg.vocab_size * sizeof(float));
            if (mm_kv_cache_init_typed(be, m->cfg.n_layers, 64 * 4 + 32, MM_KV_BLOCK_SIZE, m->cfg.n_kv_heads,
                                       m->cfg.head_dim, mm_llama_kv_dtype(m), &r[d].kv) != MM_OK)
                return 1;
        }
        double peak[N_DTYPES], prefill[N_DTYPES][REPEATS], decode[N_DTYPES][3][REPEATS];
        for (int d = 0; d < N_DTYPES; d++) peak[d] = gemm_peak(be, dts[d]);
        for (int rep = 0; rep < REPEATS; rep++) /* rounds: every dtype once per measurement, in turn */
            for (int d = 0; d < N_DTYPES; d++) {
                prefill[d][rep] = bench_prefill(&r[d], 256);
                for (int bi = 0; bi < 3; bi++) decode[d][bi][rep] = bench_decode(&r[d], batches[bi], steps);
            }
        for (int d = 0; d < N_DTYPES; d++) {
            double v[REPEATS], pf, dec[3]; /* mm_bench_median sorts: copies keep the rounds paired for the ratios */
            memcpy(v, prefill[d], sizeof v), pf = mm_bench_median(v, REPEATS);
            for (int bi = 0; bi < 3; bi++) memcpy(v, decode[d][bi], sizeof v), dec[bi] = mm_bench_median(v, REPEATS);
            double wb = weight_bytes(&r[d].m->cfg, dts[d]);
            printf("%s    {\"dtype\": \"%s\", \"threads\": %d, \"prefill_tokens_per_s\": %.1f, "
                   "\"decode_tokens_per_s\": {\"1\": %.2f, \"16\": %.1f, \"64\": %.1f},\n"
                   "     \"gemm_peak_gflops\": %.1f, \"prefill_gflops\": %.1f, \"prefill_fraction_of_gemm_peak\": %.3f,\n"
                   "     \"weight_bytes_per_token\": %.0f, \"read_bandwidth_gbs\": %.2f, "
                   "\"decode_b1_fraction_of_bandwidth\": %.3f, \"decode_b64_over_b1\": %.1f}",
                   first ? "" : ",\n", dtypes[d], nt, pf, dec[0], dec[1], dec[2], peak[d],
                   pf * flops_per_token(&r[d].m->cfg) * 1e-9, pf * flops_per_token(&r[d].m->cfg) * 1e-9 / peak[d], wb,
                   bw, dec[0] * wb * 1e-9 / bw, dec[2] / dec[0]);
            first = 0;
        }
        /* q8 over bf16 and over f32: the median of the per-round ratios */
        for (int base = 0; base < 2; base++) {
            double rp[REPEATS], rd[3][REPEATS];
            for (int rep = 0; rep < REPEATS; rep++) {
                rp[rep] = prefill[2][rep] / prefill[base][rep];
                for (int bi = 0; bi < 3; bi++) rd[bi][rep] = decode[2][bi][rep] / decode[base][bi][rep];
            }
            printf(",\n    {\"ratio\": \"q8/%s\", \"threads\": %d, \"prefill\": %.3f, \"decode\": {\"1\": %.3f, "
                   "\"16\": %.3f, \"64\": %.3f}}", dtypes[base], nt, mm_bench_median(rp, REPEATS),
                   mm_bench_median(rd[0], REPEATS), mm_bench_median(rd[1], REPEATS), mm_bench_median(rd[2], REPEATS));
        }
        fflush(stdout);
        for (int d = 0; d < N_DTYPES; d++) {
            mm_kv_cache_free(r[d].kv);
            free(r[d].seqs), free(r[d].logits);
            mm_llama_free(r[d].m);
        }
        mm_backend_free(be);
    }
    printf("\n  ]\n}\n");
    return 0;
}
