/* The LLaMA decoder against transformers (goldens from tools/reference/
 * make_llama_goldens.py): per-position logits of four prompts, 64-token greedy
 * continuations, on each tiny checkpoint (GQA + llama3 rope, sharded; MHA; bf16;
 * tied f16), on the fast and the reference CPU backends. Also checks that the way the
 * work is cut does not change results: all prompts in one batch, chunked prefill,
 * batched greedy decoding, and the layers split into two pipeline-stage slices. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "common/safetensors.h"
#include "kernels/cpu/cpu_ops.h"
#include "model/llama.h"
#include "tests/testutil.h"

typedef struct {
    int n_prompts;
    int32_t *prompts[8];
    int prompt_len[8];
    int n_greedy;
    int greedy_prompt[8];
    int32_t *greedy[8];
    double *gaps[8]; /* [greedy_len] top-1 minus top-2 logit at each greedy step */
    int greedy_len;
} golden;

static int32_t *json_ids(json_t *a, int *n) {
    *n = (int)json_array_size(a);
    int32_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return ids;
}

static int golden_load(const char *dir, golden *g) {
    char path[4096];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) {
        fprintf(stderr, "%s: %s\n", path, err.text);
        return -1;
    }
    memset(g, 0, sizeof *g);
    json_t *prompts = json_object_get(root, "prompts"), *greedy = json_object_get(root, "greedy");
    json_t *gidx = json_object_get(root, "greedy_prompt_indices"), *gaps = json_object_get(root, "greedy_top2_gaps");
    g->n_prompts = (int)json_array_size(prompts);
    for (int i = 0; i < g->n_prompts; i++) g->prompts[i] = json_ids(json_array_get(prompts, (size_t)i), &g->prompt_len[i]);
    g->n_greedy = (int)json_array_size(greedy);
    for (int i = 0; i < g->n_greedy; i++) {
        g->greedy[i] = json_ids(json_array_get(greedy, (size_t)i), &g->greedy_len);
        g->greedy_prompt[i] = (int)json_integer_value(json_array_get(gidx, (size_t)i));
        json_t *gi = json_array_get(gaps, (size_t)i);
        g->gaps[i] = calloc((size_t)g->greedy_len, sizeof(double));
        for (int t = 0; t < g->greedy_len && t < (int)json_array_size(gi); t++)
            g->gaps[i][t] = json_number_value(json_array_get(gi, (size_t)t));
    }
    json_decref(root);
    return 0;
}

static void golden_free(golden *g) {
    for (int i = 0; i < g->n_prompts; i++) free(g->prompts[i]);
    for (int i = 0; i < g->n_greedy; i++) free(g->greedy[i]), free(g->gaps[i]);
}

typedef struct {
    const char *name;
    float logits_bound;   /* max abs error on logits (f32 arithmetic) */
    int rounds_to_bf16;   /* on the fast backend, activations are rounded to bf16 */
} model_case;

/* KV cache dtype of the current case: the production choice (mm_llama_kv_dtype) on the
 * fast backend; f32 on the reference backend, whose goldens are exact f32 arithmetic. */
static mm_dtype kv_dtype = MM_DTYPE_F32;

static mm_kv_cache *new_cache(mm_llama *m, int n_layers) {
    mm_kv_cache *kv = NULL;
    mm_status s = mm_kv_cache_init_typed(m->be, n_layers, 256, MM_KV_BLOCK_SIZE, m->cfg.n_kv_heads, m->cfg.head_dim, kv_dtype, &kv);
    EXPECT(s == MM_OK, "kv cache: %s", mm_error_last());
    return kv;
}

/* Logits of every prompt position, prompts processed one by one. */
static float *prompt_logits(mm_llama *m, const int32_t *ids, int n, int chunk) {
    mm_kv_cache *kv = new_cache(m, m->cfg.n_layers);
    float *lg = malloc((size_t)n * m->cfg.vocab_size * sizeof *lg);
    mm_llama_seq seq = {0}, *sp = &seq;
    for (int off = 0; off < n; off += chunk) {
        int len = n - off < chunk ? n - off : chunk;
        const int32_t *t = ids + off;
        mm_status s = mm_llama_eval(m, kv, &sp, &t, &len, 1, 1, lg + (size_t)off * m->cfg.vocab_size);
        EXPECT(s == MM_OK, "eval: %s", mm_error_last());
    }
    mm_kv_seq_release(kv, &seq.kv);
    mm_kv_cache_free(kv);
    return lg;
}

static const float *golden_logits(mm_safetensors *st, int i, int n, int V) {
    char name[64];
    snprintf(name, sizeof name, "logits.%d", i);
    const mm_st_tensor *t;
    int64_t shape[2] = {n, V};
    if (mm_safetensors_get(st, name, 2, shape, &t) != MM_OK) {
        EXPECT(0, "golden %s: %s", name, mm_error_last());
        return NULL;
    }
    return t->data;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy continuation of several prompts decoded together in one batch. With exact
 * arithmetic (logit_error ~ 1e-5, far below every golden top-2 gap) the tokens must be
 * identical. A lower-precision path (bf16) may diverge, but only at a step where the
 * reference's own top-2 gap is within twice its logit error: a genuine near-tie. */
static void check_greedy_batched(mm_llama *m, const golden *g, const char *label, float logit_error) {
    int B = g->n_greedy, V = m->cfg.vocab_size;
    mm_kv_cache *kv = new_cache(m, m->cfg.n_layers);
    mm_llama_seq seqs[8] = {{{0}}};
    mm_llama_seq *ptrs[8];
    const int32_t *toks[8];
    int32_t cnt[8], next[8];
    int32_t out[8][128];
    float *lg = malloc((size_t)B * V * sizeof *lg);
    for (int b = 0; b < B; b++) {
        ptrs[b] = &seqs[b];
        toks[b] = g->prompts[g->greedy_prompt[b]];
        cnt[b] = g->prompt_len[g->greedy_prompt[b]];
    }
    EXPECT(mm_llama_eval(m, kv, ptrs, toks, cnt, B, 0, lg) == MM_OK, "eval: %s", mm_error_last());
    for (int step = 0; step < g->greedy_len; step++) {
        for (int b = 0; b < B; b++) {
            next[b] = out[b][step] = argmax(lg + (size_t)b * V, V);
            toks[b] = &next[b], cnt[b] = 1;
        }
        if (step + 1 < g->greedy_len)
            EXPECT(mm_llama_eval(m, kv, ptrs, toks, cnt, B, 0, lg) == MM_OK, "eval: %s", mm_error_last());
    }
    for (int b = 0; b < B; b++) {
        int first_diff = -1;
        for (int i = 0; i < g->greedy_len && first_diff < 0; i++)
            if (out[b][i] != g->greedy[b][i]) first_diff = i;
        double gap = first_diff >= 0 ? g->gaps[b][first_diff] : 0.0;
        if (first_diff >= 0) printf("%s: continuation %d leaves the golden path at token %d (golden top-2 gap %.3g)\n",
                                    label, b, first_diff, gap);
        EXPECT(first_diff < 0 || gap < 2.0 * logit_error,
               "%s: greedy continuation %d differs at token %d (%d vs golden %d) where the golden top-2 gap %.3g "
               "exceeds twice the logit error %.3g", label, b, first_diff, first_diff >= 0 ? out[b][first_diff] : 0,
               first_diff >= 0 ? g->greedy[b][first_diff] : 0, gap, logit_error);
        mm_kv_seq_release(kv, &seqs[b].kv);
    }
    free(lg);
    mm_kv_cache_free(kv);
}

/* All prompts in one batched call must give exactly the per-prompt logits. */
static void check_batched_prefill(mm_llama *m, const golden *g, float *const *single) {
    int V = m->cfg.vocab_size, total = 0, B = g->n_prompts;
    mm_kv_cache *kv = new_cache(m, m->cfg.n_layers);
    mm_llama_seq seqs[8] = {{{0}}};
    mm_llama_seq *ptrs[8];
    const int32_t *toks[8];
    int32_t cnt[8];
    for (int b = 0; b < B; b++) ptrs[b] = &seqs[b], toks[b] = g->prompts[b], cnt[b] = g->prompt_len[b], total += cnt[b];
    float *lg = malloc((size_t)total * V * sizeof *lg);
    EXPECT(mm_llama_eval(m, kv, ptrs, toks, cnt, B, 1, lg) == MM_OK, "eval: %s", mm_error_last());
    for (int b = 0, off = 0; b < B; off += cnt[b], b++) {
        EXPECT(memcmp(lg + (size_t)off * V, single[b], (size_t)cnt[b] * V * sizeof(float)) == 0,
               "prompt %d: batched prefill logits not bit-identical to the single-prompt ones", b);
        mm_kv_seq_release(kv, &seqs[b].kv);
    }
    free(lg);
    mm_kv_cache_free(kv);
}

/* Stage slices of half-layer blocks [cut[k], cut[k + 1]) chained by hand give the whole
 * model's logits bit for bit, whether the cuts fall between layers or inside one
 * (between its self-attention and its MLP). */
static void check_stage_split(const char *dir, mm_backend *be, const golden *g, const float *whole, const int32_t *cut,
                              int n_slices) {
    enum { MAX_SLICES = 4 };
    mm_llama *m[MAX_SLICES] = {0};
    mm_kv_cache *kv[MAX_SLICES] = {0};
    int ok = n_slices <= MAX_SLICES;
    for (int k = 0; k < n_slices && ok; k++) {
        int parts = (k == 0 ? MM_LLAMA_EMBED : 0) | (k == n_slices - 1 ? MM_LLAMA_HEAD : 0);
        ok = mm_llama_load_blocks(dir, be, cut[k], cut[k + 1], parts, &m[k]) == MM_OK;
        EXPECT(ok, "blocks [%d, %d): %s", cut[k], cut[k + 1], mm_error_last());
        if (ok) kv[k] = new_cache(m[k], m[k]->n_kv_layers);
        ok = ok && kv[k];
    }
    if (ok) {
        const mm_llama *first = m[0], *last = m[n_slices - 1];
        EXPECT(n_slices < 2 || (first->lm_head.data == NULL && last->embed_tokens.data == NULL),
               "stage slices loaded parts they do not own");
        int n = g->prompt_len[3], V = first->cfg.vocab_size, D = first->cfg.dim;
        mm_kv_seq seq = {0};
        for (int k = 0; k < n_slices; k++) /* same block ids in every stage: one table serves all */
            mm_kv_seq_reserve(kv[k], &seq, n);
        int32_t *pos = malloc((size_t)n * 4), *slots = malloc((size_t)n * 4);
        mm_attn_row *rows = malloc((size_t)n * sizeof *rows);
        for (int t = 0; t < n; t++) {
            pos[t] = t, slots[t] = seq.blocks[t / MM_KV_BLOCK_SIZE] * MM_KV_BLOCK_SIZE + t % MM_KV_BLOCK_SIZE;
            rows[t] = (mm_attn_row){seq.blocks, t + 1};
        }
        mm_llama_batch batch = {n, pos, slots, rows};
        float *x = malloc((size_t)n * D * 4), *lg = malloc((size_t)n * V * 4);
        EXPECT(mm_llama_embed(m[0], g->prompts[3], n, x) == MM_OK, "%s", mm_error_last());
        for (int k = 0; k < n_slices; k++)
            EXPECT(mm_llama_forward_layers(m[k], kv[k], &batch, x) == MM_OK, "%s", mm_error_last());
        EXPECT(mm_llama_head(m[n_slices - 1], x, n, x, lg) == MM_OK, "%s", mm_error_last());
        EXPECT(memcmp(lg, whole, (size_t)n * V * 4) == 0, "%d-stage logits (first cut at block %d) not bit-identical "
               "to the whole model", n_slices, cut[1]);
        free(pos), free(slots), free(rows), free(x), free(lg), free(seq.blocks);
    }
    for (int k = 0; k < n_slices; k++) mm_kv_cache_free(kv[k]), mm_llama_free(m[k]);
}

/* Max and mean |a - ref| over the vocab at each position: row[p] of n rows of V. */
static void row_errors(const float *a, const float *ref, int n, int V, double *max_abs, double *mean_abs) {
    for (int p = 0; p < n; p++) {
        double mx = 0, sum = 0;
        for (int v = 0; v < V; v++) {
            double d = fabs((double)a[(size_t)p * V + v] - (double)ref[(size_t)p * V + v]);
            mx = d > mx ? d : mx, sum += d;
        }
        max_abs[p] = mx, mean_abs[p] = sum / V;
    }
}

/* The bf16 numerics measured (README, "bf16 numerics"): with bf16 weights our logits,
 * for a KV cache in f32 and in bf16, must be at least as close to exact arithmetic
 * (logits: f32 on the same bf16-rounded weights, within ~1e-5 of f64) as transformers'
 * own bf16 run (logits_native). per_position: at every position, in max and in mean
 * absolute error. Otherwise (the fast backend, whose GEMM rounds activations to bf16 as
 * transformers does, in other places) per prompt: the worst position's max and the
 * average of the means; the positions where ours is the larger are counted and printed. */
static void check_bf16_errors(mm_llama *m, const golden *g, mm_safetensors *st, mm_safetensors *native,
                              int per_position) {
    static const mm_dtype kinds[] = {MM_DTYPE_F32, MM_DTYPE_BF16};
    const int V = m->cfg.vocab_size;
    mm_dtype saved = kv_dtype;
    for (size_t k = 0; k < 2; k++) {
        kv_dtype = kinds[k];
        for (int i = 0; i < g->n_prompts; i++) {
            int n = g->prompt_len[i];
            const float *gold = golden_logits(st, i, n, V), *nat = golden_logits(native, i, n, V);
            if (!gold || !nat) continue;
            float *ours = prompt_logits(m, g->prompts[i], n, n);
            double *e = malloc(4 * (size_t)n * sizeof *e); /* ours max, ours mean, theirs max, theirs mean */
            row_errors(ours, gold, n, V, e, e + n);
            row_errors(nat, gold, n, V, e + 2 * n, e + 3 * n);
            double worst[4] = {0}, sum[4] = {0};
            int over = 0;
            for (int p = 0; p < n; p++) {
                for (int q = 0; q < 4; q++) worst[q] = fmax(worst[q], e[q * n + p]), sum[q] += e[q * n + p];
                if (e[p] > e[2 * n + p] || e[n + p] > e[3 * n + p]) {
                    over++;
                    EXPECT(!per_position, "bf16 kv %s prompt %d position %d: our error (max %.4g, mean %.4g) exceeds "
                           "transformers' bf16 (max %.4g, mean %.4g)", mm_dtype_name(kinds[k]), i, p, e[p], e[n + p],
                           e[2 * n + p], e[3 * n + p]);
                }
            }
            EXPECT(worst[0] <= worst[2] && sum[1] <= sum[3], "bf16 kv %s prompt %d: our error (worst max %.4g, mean %.4g) "
                   "exceeds transformers' bf16 (%.4g, %.4g)", mm_dtype_name(kinds[k]), i, worst[0], sum[1] / n, worst[2],
                   sum[3] / n);
            printf("bf16 weights, %s, kv %-4s, prompt %d (%3d positions): ours max %.3g mean %.3g | transformers bf16 "
                   "max %.3g mean %.3g (max: worst position, mean: averaged) | positions over: %d\n",
                   m->be->ops->name, mm_dtype_name(kinds[k]), i, n, worst[0], sum[1] / n, worst[2], sum[3] / n, over);
            free(e), free(ours);
        }
    }
    kv_dtype = saved;
}

static void run_case(const model_case *c, const char *backend) {
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s", mm_golden_path("llama/"));
    strncat(dir, c->name, sizeof dir - strlen(dir) - 1);
    golden g;
    if (golden_load(dir, &g)) {
        EXPECT(0, "cannot load golden for %s", c->name);
        return;
    }
    mm_backend *be = NULL;
    mm_llama *m = NULL;
    mm_safetensors *st = NULL, *native = NULL;
    /* the cpu backend keeps the checkpoint's KV dtype (bf16 here) and, with oneDNN's bf16
     * kernels, rounds activations to bf16: bounded by transformers' own bf16 error */
    int bf16_act = c->rounds_to_bf16 && !strcmp(backend, "cpu");
    EXPECT(mm_backend_init(backend, 2, &be) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_llama_load(dir, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m) == MM_OK, "%s: %s", c->name, mm_error_last());
    snprintf(path, sizeof path, "%s/logits.safetensors", dir);
    EXPECT(mm_safetensors_open(path, &st) == MM_OK, "%s", mm_error_last());
    if (c->rounds_to_bf16) { /* a bf16 checkpoint: transformers' own bf16 logits */
        snprintf(path, sizeof path, "%s/logits_native.safetensors", dir);
        EXPECT(mm_safetensors_open(path, &native) == MM_OK, "%s", mm_error_last());
    }
    if (!m || !st || (c->rounds_to_bf16 && !native)) goto out;
    kv_dtype = strcmp(backend, "cpu") ? MM_DTYPE_F32 : mm_llama_kv_dtype(m);
    float *single[8] = {0};
    float worst = c->logits_bound; /* the error this path is allowed on logits */
    int V = m->cfg.vocab_size;
    for (int i = 0; i < g.n_prompts; i++) {
        int n = g.prompt_len[i];
        single[i] = prompt_logits(m, g.prompts[i], n, n);
        const float *gold = golden_logits(st, i, n, V);
        if (!gold) continue;
        float err = mm_max_abs_diff(single[i], gold, (size_t)n * V), bound = c->logits_bound;
        if (bf16_act) {
            /* bf16 activations and KV cache: at least as close to exact arithmetic as
             * transformers itself running this checkpoint in bf16 (logits_native) is. */
            const float *nat = golden_logits(native, i, n, V);
            bound = nat ? mm_max_abs_diff(nat, gold, (size_t)n * V) : 0.0f;
            worst = bound > worst ? bound : worst;
        }
        printf("%-10s %-7s prompt %d (%3d tokens): max abs logit error %.3g (bound %.3g)\n", c->name, backend, i, n, err,
               bound);
        EXPECT(err <= bound, "%s/%s prompt %d: max abs error %g > %g", c->name, backend, i, err, bound);
        /* chunked prefill (chunks of 7 and 33) gives the same logits as one pass */
        for (int ch = 7; ch <= 33; ch += 26) {
            float *chunked = prompt_logits(m, g.prompts[i], n, ch);
            EXPECT(memcmp(chunked, single[i], (size_t)n * V * 4) == 0,
                   "%s prompt %d: chunked prefill (%d) not bit-identical", c->name, i, ch);
            free(chunked);
        }
    }
    if (c->rounds_to_bf16) check_bf16_errors(m, &g, st, native, !bf16_act || !mm_cpu_gemm_rounds_activations());
    check_batched_prefill(m, &g, single);
    if (!strcmp(backend, "cpu")) { /* one thread gives the same bits as two */
        mm_backend *be1 = NULL;
        mm_llama *m1 = NULL;
        EXPECT(mm_backend_init("cpu", 1, &be1) == MM_OK, "%s", mm_error_last());
        EXPECT(mm_llama_load(dir, be1, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m1) == MM_OK, "%s", mm_error_last());
        if (m1) {
            float *lg1 = prompt_logits(m1, g.prompts[3], g.prompt_len[3], g.prompt_len[3]);
            EXPECT(memcmp(lg1, single[3], (size_t)g.prompt_len[3] * V * 4) == 0,
                   "%s: logits with 1 thread differ from 2 threads", c->name);
            free(lg1);
        }
        mm_llama_free(m1);
        mm_backend_free(be1);
    }
    char label[128];
    snprintf(label, sizeof label, "%s/%s", c->name, backend);
    check_greedy_batched(m, &g, label, worst);
    { /* two stages cut between layers; three cut inside layers (one holds a lone MLP) */
        int32_t B = m->cfg.n_layers * MM_LLAMA_BLOCKS_PER_LAYER, half = m->cfg.n_layers / 2 * MM_LLAMA_BLOCKS_PER_LAYER;
        int32_t two[] = {0, half > 0 ? half : MM_LLAMA_BLOCKS_PER_LAYER, B}, three[] = {0, 1, B - 1, B};
        check_stage_split(dir, be, &g, single[3], two, 2);
        if (B >= 3) check_stage_split(dir, be, &g, single[3], three, 3);
    }
    for (int i = 0; i < g.n_prompts; i++) free(single[i]);
out:
    mm_safetensors_close(st);
    mm_safetensors_close(native);
    mm_llama_free(m);
    mm_backend_free(be);
    golden_free(&g);
}

int main(void) {
    /* f32 arithmetic on f32 / f16 / bf16 stored weights: transformers' own f32-vs-f64
     * logits differ by ~1.5e-5 (golden.json), so 1e-4 leaves room only for summation
     * order. The fast backend's bf16 GEMM rounds activations to bf16 (see run_case). */
    const model_case cases[] = {
        {"gqa_llama3", 1e-4f, 0},
        {"mha", 1e-4f, 0},
        {"tied_f16", 1e-4f, 0},
        {"bf16", 1e-4f, 1},
    };
    const char *backends[] = {"cpu", "cpu-ref"};
    for (size_t b = 0; b < 2; b++)
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(&cases[i], backends[b]);
    return mm_test_finish("test_llama_golden");
}
