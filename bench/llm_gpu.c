/* bench/llm_gpu: LLaMA-3.1-8B-shaped throughput on the CUDA backend, one JSON object.
 * bf16 random weights from mm-mkmodel (--preset llama3-8b; --layers N for a shorter
 * model, same per-layer shapes). Measures, as the serving stage runs them (embed ->
 * layers -> final norm + lm_head -> GPU greedy sampling -> ids on the host):
 * decode tokens/s at batch 1, 8, 64, 256 and prefill tokens/s of a 2048-token prompt
 * (medians). Baselines from the same run: a device-to-device copy (batch-1 decode =
 * weight bytes per step / step time against it; target >= 0.85) and a cuBLAS bf16
 * GEMM (prefill FLOP/s against it; target >= 0.70). The PyTorch baseline is
 * bench/llm_torch.py; tests/gpu/run.sh puts the two side by side. --profile adds, for
 * decode at batch 1 and 64, each op kind's own time per step (bench/op_profile.c)
 * against the unwrapped step: where a step's time goes. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "bench/op_profile.h"
#include "common/crash.h"
#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"
#include "model/llama.h"

#ifndef MM_MKMODEL_PATH
#define MM_MKMODEL_PATH "mm-mkmodel"
#endif

#define REPEATS 5
#define PROMPT 32 /* tokens per sequence before the decode steps */
#define KV_FRACTION 0.9 /* of the memory left after the weights */


#define DIE(...)                                                                                   \
    do {                                                                                           \
        fprintf(stderr, "llm_gpu: " __VA_ARGS__);                                                  \
        fprintf(stderr, ": %s\n", mm_error_last());                                                \
        exit(1);                                                                                   \
    } while (0)

/* The serving step: rows of B sequences, the last row of each gets a greedy token. */
typedef struct {
    mm_llama *m;
    mm_backend *be;
    mm_kv_cache *kv;
    mm_kv_seq *seqs;    /* [max_seqs] */
    int max_seqs;
    int64_t cap;        /* rows */
    float *x, *sel, *logits; /* device: [cap, dim], [max_seqs, dim], [max_seqs, vocab] */
    int32_t *ids, *pos, *slots, *picked; /* host [cap] */
    mm_attn_row *rows;  /* host [cap] */
    mm_sampling *samp;  /* host [max_seqs] */
    uint64_t *rng;
} runner;

/* n[b] new tokens for sequences 0..B-1 (token ids arbitrary), then one sampled id each. */
static void step(runner *r, int B, const int32_t *n) {
    const mm_llama_config *c = &r->m->cfg;
    int64_t M = 0;
    for (int b = 0; b < B; b++) M += n[b];
    if (B > r->max_seqs || M > r->cap) {
        fprintf(stderr, "llm_gpu: a step of %d sequences, %lld rows, exceeds %d / %lld\n", B, (long long)M, r->max_seqs,
                (long long)r->cap);
        exit(1);
    }
    M = 0;
    for (int b = 0; b < B; b++) {
        mm_kv_seq *q = &r->seqs[b];
        if (mm_kv_seq_reserve(r->kv, q, q->n_tokens + n[b]) != MM_OK) DIE("KV reserve");
        for (int32_t t = 0; t < n[b]; t++, M++) {
            int32_t p = q->n_tokens + t;
            r->ids[M] = (int32_t)((M * 7919 + b) % c->vocab_size), r->pos[M] = p;
            r->slots[M] = q->blocks[p / r->kv->block_size] * r->kv->block_size + p % r->kv->block_size;
            r->rows[M] = (mm_attn_row){q->blocks, p + 1};
        }
    }
    mm_llama_batch batch = {M, r->pos, r->slots, r->rows};
    mm_backend *be = r->be;
    if (mm_llama_embed(r->m, r->ids, M, r->x) != MM_OK || mm_llama_forward_layers(r->m, r->kv, &batch, r->x) != MM_OK)
        DIE("forward");
    for (int b = 0, row = 0; b < B; row += n[b], b++)
        be->ops->copy(be, r->sel + (int64_t)b * c->dim, r->x + (int64_t)(row + n[b] - 1) * c->dim, (size_t)c->dim * 4);
    if (mm_llama_head(r->m, r->sel, B, r->sel, r->logits) != MM_OK ||
        be->ops->sample(be, r->logits, B, c->vocab_size, r->samp, r->rng, r->picked) != MM_OK)
        DIE("head/sample");
    for (int b = 0; b < B; b++) r->seqs[b].n_tokens += n[b];
}

static void reset(runner *r) {
    for (int i = 0; i < r->max_seqs; i++) mm_kv_seq_release(r->kv, &r->seqs[i]);
}

static double bench_prefill(runner *r, int T) {
    double t[REPEATS];
    int32_t n[1] = {T};
    step(r, 1, n), reset(r); /* warm-up: scratch, cuBLAS heuristics */
    for (int rep = 0; rep < REPEATS; rep++) {
        double t0 = mm_now_s();
        step(r, 1, n); /* ends with the sampled id on the host: synchronous */
        t[rep] = T / (mm_now_s() - t0);
        reset(r);
    }
    return mm_bench_median(t, REPEATS);
}

/* B sequences prefilled with 32 tokens, then `steps` decode steps: tokens/s. */
static double bench_decode(runner *r, int B, int steps) {
    double t[REPEATS];
    int32_t n[256];
    for (int rep = 0; rep < REPEATS; rep++) {
        for (int b = 0; b < B; b++) n[b] = PROMPT;
        step(r, B, n);
        for (int b = 0; b < B; b++) n[b] = 1;
        step(r, B, n); /* warm-up of the decode shapes */
        double t0 = mm_now_s();
        for (int s = 0; s < steps; s++) step(r, B, n);
        t[rep] = (double)B * steps / (mm_now_s() - t0);
        reset(r);
    }
    return mm_bench_median(t, REPEATS);
}

/* {"batch": B, "step_ms": unwrapped, "ops_ms": {...}} for `steps` decode steps of B
 * sequences after a PROMPT-token prefill, into buf. */
static void profile_decode(runner *r, int B, int steps, char *buf, size_t n) {
    int32_t nn[256];
    for (int b = 0; b < B; b++) nn[b] = PROMPT;
    step(r, B, nn);
    for (int b = 0; b < B; b++) nn[b] = 1;
    step(r, B, nn);
    double t0 = mm_now_s();
    for (int i = 0; i < steps; i++) step(r, B, nn);
    double plain_ms = (mm_now_s() - t0) * 1e3 / steps;
    char ops[1024];
    mm_op_profile_begin(r->be);
    for (int i = 0; i < steps; i++) step(r, B, nn);
    mm_op_profile_end(r->be);
    mm_op_profile_json(steps, ops, sizeof ops);
    reset(r);
    snprintf(buf, n, "{\"batch\": %d, \"step_ms\": %.3f, \"ops_ms\": %s}", B, plain_ms, ops);
}

static double weight_bytes(const mm_llama_config *c) { /* read per decode step at batch 1 (bf16) */
    double per_layer = (double)c->dim * c->head_dim * (2.0 * c->n_heads + 2.0 * c->n_kv_heads) + 3.0 * c->dim * c->hidden_dim;
    return (per_layer * c->n_layers + (double)c->vocab_size * c->dim) * 2.0;
}

/* A T-token prefill as the step runs it: every layer's GEMMs per token, causal
 * attention (QK^T and PV over the keys at or before each row), lm_head for the last row. */
static double prefill_flops(const mm_llama_config *c, int T) {
    double per_layer = (double)c->dim * c->head_dim * (2.0 * c->n_heads + 2.0 * c->n_kv_heads) + 3.0 * c->dim * c->hidden_dim;
    double attn = 2.0 * 2.0 * c->n_heads * c->head_dim * ((double)T * (T + 1) / 2.0);
    return (2.0 * per_layer * T + attn) * c->n_layers + 2.0 * (double)c->vocab_size * c->dim;
}

int main(int argc, char **argv) {
    const char *workdir = NULL;
    int layers = 32, steps = 32, profile = 0;
    static const struct option opts[] = {{"workdir", required_argument, 0, 'w'},
                                         {"layers", required_argument, 0, 'l'},
                                         {"steps", required_argument, 0, 's'},
                                         {"profile", no_argument, 0, 'p'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'w') workdir = optarg;
        else if (o == 'l') layers = atoi(optarg);
        else if (o == 's') steps = atoi(optarg);
        else if (o == 'p') profile = 1;
        else {
            fprintf(stderr, "usage: llm_gpu [--workdir DIR] [--layers N (32)] [--steps N (32)] [--profile]\n");
            return 2;
        }
    }
    mm_crash_trace_install();
    if (mm_cuda_device_count() == 0) {
        printf("{\"benchmark\": \"llm_gpu\", \"skipped\": \"no GPU\"}\n");
        return 0;
    }
    char tmp[] = "/tmp/mm-bench-gpu-XXXXXX", dir[4096], cfg[4200], cmd[8600];
    if (!workdir && !(workdir = mkdtemp(tmp))) return 1;
    mkdir(workdir, 0755);
    snprintf(dir, sizeof dir, "%s/llama3-8b-bf16-L%d", workdir, layers);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (access(cfg, R_OK) != 0) {
        snprintf(cmd, sizeof cmd, "%s --preset llama3-8b --dtype bf16 --layers %d --out %s >&2", MM_MKMODEL_PATH, layers, dir);
        if (system(cmd) != 0) DIE("mm-mkmodel failed");
    }
    mm_backend *be;
    if (mm_backend_init("cuda", 1, &be) != MM_OK) DIE("backend");
    double copy_gbs = 0, gemm_tflops = 0;
    if (mm_backend_cuda_probe_copy(be, (size_t)2 << 30, &copy_gbs) != MM_OK) DIE("copy probe");
    if (mm_backend_cuda_probe_gemm(be, 8192, 8192, 8192, &gemm_tflops) != MM_OK) DIE("gemm probe");
    double t0 = mm_now_s();
    /* rows: the 2048-token prefill, or 256 prompts of PROMPT tokens in one step */
    runner r = {.be = be, .max_seqs = 256, .cap = 256 * PROMPT > 2048 ? 256 * PROMPT : 2048};
    if (mm_llama_load(dir, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &r.m) != MM_OK) DIE("load %s", dir);
    double load_s = mm_now_s() - t0;
    const mm_llama_config *c = &r.m->cfg;
    r.x = be->ops->alloc(be, (size_t)r.cap * c->dim * 4);
    r.sel = be->ops->alloc(be, (size_t)r.max_seqs * c->dim * 4);
    r.logits = be->ops->alloc(be, (size_t)r.max_seqs * c->vocab_size * 4);
    if (!r.x || !r.sel || !r.logits) DIE("activation buffers");
    r.ids = malloc((size_t)r.cap * 4), r.pos = malloc((size_t)r.cap * 4), r.slots = malloc((size_t)r.cap * 4);
    r.picked = malloc((size_t)r.cap * 4), r.rows = malloc((size_t)r.cap * sizeof *r.rows);
    r.samp = calloc((size_t)r.max_seqs, sizeof *r.samp), r.rng = calloc((size_t)r.max_seqs, 8);
    r.seqs = calloc((size_t)r.max_seqs, sizeof *r.seqs);
    /* KV blocks from the memory planner: 90% of what is left, 2 GiB kept for scratch */
    size_t block_bytes = 2ull * c->n_layers * c->n_kv_heads * MM_KV_BLOCK_SIZE * c->head_dim * 2;
    int32_t n_blocks = 0, need = 256 * ((PROMPT + 2 + steps + MM_KV_BLOCK_SIZE - 1) / MM_KV_BLOCK_SIZE + 1);
    if (need < 2048 / 16 + 1) need = 2048 / 16 + 1;
    if (mm_cuda_plan_kv_blocks(be, KV_FRACTION, (size_t)2 << 30, block_bytes, need, &n_blocks) != MM_OK) DIE("KV plan");
    if (n_blocks > 4 * need) n_blocks = 4 * need;
    if (mm_kv_cache_init_typed(be, c->n_layers, n_blocks, MM_KV_BLOCK_SIZE, c->n_kv_heads, c->head_dim, MM_DTYPE_BF16, &r.kv) != MM_OK)
        DIE("KV cache");
    fprintf(stderr, "llm_gpu: loaded in %.1f s, %d KV blocks; prefill 2048\n", load_s, n_blocks);
    double prefill = bench_prefill(&r, 2048);
    const int batches[] = {1, 8, 64, 256};
    double decode[4];
    for (int i = 0; i < 4; i++) {
        fprintf(stderr, "llm_gpu: decode batch %d\n", batches[i]);
        decode[i] = bench_decode(&r, batches[i], steps);
    }
    char prof[2][1400] = {"", ""};
    if (profile) {
        fprintf(stderr, "llm_gpu: per-op profile at batch 1 and 64\n");
        profile_decode(&r, 1, steps, prof[0], sizeof prof[0]);
        profile_decode(&r, 64, steps, prof[1], sizeof prof[1]);
    }
    double wb = weight_bytes(c), fl = prefill_flops(c, 2048) / 2048.0; /* per prefill token */
    mm_cuda_mem mem;
    mm_backend_cuda_mem(be, &mem);
    printf("{\n  \"benchmark\": \"llm_gpu\", \"model\": \"llama3-8b shapes, bf16 random\", \"layers\": %d, "
           "\"repeats\": %d, \"stat\": \"median\", \"decode_steps\": %d,\n", c->n_layers, REPEATS, steps);
    printf("  \"d2d_copy_gbs\": %.1f, \"cublas_bf16_gemm_tflops\": %.1f, \"load_s\": %.1f, \"kv_blocks\": %d,\n",
           copy_gbs, gemm_tflops, load_s, n_blocks);
    printf("  \"weights_gib\": %.2f, \"free_gib_after_setup\": %.2f,\n", mem.weights / 1073741824.0, mem.free / 1073741824.0);
    printf("  \"prefill_2048_tokens_per_s\": %.1f, \"prefill_tflops\": %.1f, \"prefill_fraction_of_gemm_peak\": %.3f,\n",
           prefill, prefill * fl * 1e-12, prefill * fl * 1e-12 / gemm_tflops);
    printf("  \"decode_tokens_per_s\": {\"1\": %.1f, \"8\": %.1f, \"64\": %.1f, \"256\": %.1f},\n", decode[0], decode[1],
           decode[2], decode[3]);
    printf("  \"weight_bytes_per_step\": %.0f, \"decode_b1_gbs\": %.1f, \"decode_b1_fraction_of_copy_bandwidth\": %.3f,\n",
           wb, decode[0] * wb * 1e-9, decode[0] * wb * 1e-9 / copy_gbs);
    if (profile) printf("  \"profile\": [%s, %s]\n}\n", prof[0], prof[1]);
    else printf("  \"profile\": null\n}\n");
    mm_kv_cache_free(r.kv);
    be->ops->dealloc(be, r.x), be->ops->dealloc(be, r.sel), be->ops->dealloc(be, r.logits);
    mm_llama_free(r.m);
    mm_backend_free(be);
    free(r.ids), free(r.pos), free(r.slots), free(r.picked), free(r.rows), free(r.samp), free(r.rng), free(r.seqs);
    return 0;
}
