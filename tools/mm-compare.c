/* mm-compare: how close other checkpoints of a LLaMA are to a reference one (e.g. q8
 * or bf16 against f32), on the reference's next-token distributions over held-out
 * text: every position of fixed-length windows of tokenized text is scored with
 * teacher forcing (one prefill per window, all logits), and the tool prints one JSON
 * object with, per model, the mean and max KL(ref || model) (nats) and the top-1
 * agreement (argmax equal). The metrics of llama.cpp's llama-perplexity --kl-divergence,
 * so the figures compare with its Q8_0's. --max-kl / --min-top1: exit 1 when a model
 * is beyond them (tests). Wiring only: the model is model/llama.c. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/runtime.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/tokenizer.h"

#define MAX_MODELS 8

typedef struct {
    const char *dir;
    mm_llama *m;
    mm_kv_cache *kv;
    double kl_sum, kl_max;
    int64_t agree;
} scored;

static void usage(FILE *f) {
    fprintf(f, "usage: mm-compare --ref DIR --texts FILE.jsonl MODEL_DIR... [--seq-len N] [--max-seqs N]\n"
               "                  [--threads N] [--max-kl X] [--min-top1 Y]\n"
               "  --texts: JSON lines with a \"text\" field (e.g. tests/golden/tokenizer/encodings.jsonl),\n"
               "           joined by newlines, tokenized and cut into windows of --seq-len (default 128) tokens\n");
}

/* The texts of a JSON-lines file, joined by '\n' (malloc'd). */
static char *read_texts(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap), line[1 << 16];
    while (out && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        const char *t = j ? json_string_value(json_object_get(j, "text")) : NULL;
        size_t n = t ? strlen(t) : 0;
        if (n && len + n + 2 > cap) out = realloc(out, cap = 2 * (len + n + 2));
        if (n && out) memcpy(out + len, t, n), len += n, out[len++] = '\n';
        json_decref(j);
    }
    fclose(f);
    if (out) out[len] = 0;
    return out;
}

/* logp[V] = log_softmax(x[V]) in double. */
static void log_softmax(const float *x, int64_t V, double *logp) {
    double mx = -INFINITY, s = 0;
    for (int64_t i = 0; i < V; i++) mx = x[i] > mx ? x[i] : mx;
    for (int64_t i = 0; i < V; i++) s += exp(x[i] - mx);
    double lse = mx + log(s);
    for (int64_t i = 0; i < V; i++) logp[i] = x[i] - lse;
}

static int64_t argmax(const float *x, int64_t V) {
    int64_t b = 0;
    for (int64_t i = 1; i < V; i++) if (x[i] > x[b]) b = i;
    return b;
}

int main(int argc, char **argv) {
    mm_runtime_init(argv);
    static const struct option opts[] = {{"ref", required_argument, 0, 'r'},      {"texts", required_argument, 0, 'x'},
                                         {"seq-len", required_argument, 0, 'L'},  {"max-seqs", required_argument, 0, 'S'},
                                         {"threads", required_argument, 0, 't'},  {"max-kl", required_argument, 0, 'k'},
                                         {"min-top1", required_argument, 0, 'a'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *ref_dir = NULL, *texts_path = NULL;
    int L = 128, max_seqs = 16, threads = 2, c;
    double max_kl = INFINITY, min_top1 = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r': ref_dir = optarg; break;
        case 'x': texts_path = optarg; break;
        case 'L': L = atoi(optarg); break;
        case 'S': max_seqs = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'k': max_kl = atof(optarg); break;
        case 'a': min_top1 = atof(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int n_models = argc - optind;
    if (!ref_dir || !texts_path || n_models < 1 || n_models > MAX_MODELS || L < 2 || max_seqs < 1 || threads < 1) {
        usage(stderr);
        return 2;
    }
    mm_backend *be = NULL;
    mm_tokenizer *tok = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", ref_dir);
    char *text = read_texts(texts_path);
    if (!text) return fprintf(stderr, "mm-compare: cannot read %s\n", texts_path), 1;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (mm_backend_cpu_init(threads, &be) != MM_OK || mm_tokenizer_load(path, &tok) != MM_OK ||
        mm_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n_ids) != MM_OK)
        return fprintf(stderr, "mm-compare: %s\n", mm_error_last()), 1;
    int32_t bos = mm_tokenizer_bos_id(tok);
    scored ref = {.dir = ref_dir}, models[MAX_MODELS];
    memset(models, 0, sizeof models);
    for (int i = 0; i <= n_models; i++) {
        scored *s = i ? &models[i - 1] : &ref;
        if (i) s->dir = argv[optind + i - 1];
        if (mm_llama_load(s->dir, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &s->m) != MM_OK ||
            mm_kv_cache_init_typed(be, s->m->cfg.n_layers, mm_kv_cache_blocks_for(L, MM_KV_BLOCK_SIZE), MM_KV_BLOCK_SIZE,
                                   s->m->cfg.n_kv_heads, s->m->cfg.head_dim, mm_llama_kv_dtype(s->m), &s->kv) != MM_OK)
            return fprintf(stderr, "mm-compare: %s\n", mm_error_last()), 1;
        if (s->m->cfg.vocab_size != ref.m->cfg.vocab_size)
            return fprintf(stderr, "mm-compare: %s has vocabulary %d, the reference %d\n", s->dir, s->m->cfg.vocab_size,
                           ref.m->cfg.vocab_size), 1;
    }
    const int64_t V = ref.m->cfg.vocab_size;
    float *lr = malloc((size_t)(L * V) * sizeof *lr), *lm = malloc((size_t)(L * V) * sizeof *lm);
    double *pr = malloc((size_t)V * sizeof *pr), *pm = malloc((size_t)V * sizeof *pm);
    int32_t *win = malloc((size_t)L * sizeof *win);
    int64_t positions = 0;
    int n_seqs = 0;
    const size_t body = (size_t)(bos >= 0 ? L - 1 : L);
    for (size_t at = 0; n_seqs < max_seqs && at + body <= n_ids; at += body, n_seqs++) {
        int32_t n = 0;
        if (bos >= 0) win[n++] = bos;
        memcpy(win + n, ids + at, body * sizeof *win);
        for (int i = 0; i <= n_models; i++) {
            scored *s = i ? &models[i - 1] : &ref;
            mm_llama_seq seq = {0};
            mm_llama_seq *sp = &seq;
            const int32_t *toks = win;
            mm_status st = mm_llama_eval(s->m, s->kv, &sp, &toks, &L, 1, 1, i ? lm : lr);
            mm_kv_seq_release(s->kv, &seq.kv);
            if (st != MM_OK) return fprintf(stderr, "mm-compare: %s: %s\n", s->dir, mm_error_last()), 1;
            if (!i) continue;
            for (int32_t p = 0; p < L; p++) {
                log_softmax(lr + (int64_t)p * V, V, pr);
                log_softmax(lm + (int64_t)p * V, V, pm);
                double kl = 0;
                for (int64_t v = 0; v < V; v++) kl += exp(pr[v]) * (pr[v] - pm[v]);
                s->kl_sum += kl, s->kl_max = kl > s->kl_max ? kl : s->kl_max;
                s->agree += argmax(lr + (int64_t)p * V, V) == argmax(lm + (int64_t)p * V, V);
            }
        }
        positions += L;
    }
    if (!positions) return fprintf(stderr, "mm-compare: %s has fewer than %d tokens\n", texts_path, L), 1;
    json_t *out = json_pack("{s:s, s:s, s:i, s:i, s:i, s:[]}", "ref", ref_dir, "texts", texts_path, "seq_len", L,
                            "sequences", n_seqs, "positions", (json_int_t)positions, "models");
    int rc = 0;
    for (int i = 0; i < n_models; i++) {
        scored *s = &models[i];
        double mean = s->kl_sum / (double)positions, top1 = (double)s->agree / (double)positions;
        json_array_append_new(json_object_get(out, "models"),
                              json_pack("{s:s, s:f, s:f, s:f}", "model", s->dir, "mean_kl", mean, "max_kl", s->kl_max,
                                        "top1_agreement", top1));
        if (!(mean <= max_kl) || !(top1 >= min_top1)) {
            fprintf(stderr, "mm-compare: %s: mean KL %.6g (at most %.6g), top-1 %.4f (at least %.4f)\n", s->dir, mean,
                    max_kl, top1, min_top1);
            rc = 1;
        }
    }
    char *dump = json_dumps(out, JSON_COMPACT);
    printf("%s\n", dump);
    free(dump), json_decref(out);
    for (int i = 0; i <= n_models; i++) {
        scored *s = i ? &models[i - 1] : &ref;
        mm_kv_cache_free(s->kv), mm_llama_free(s->m);
    }
    free(lr), free(lm), free(pr), free(pm), free(win), free(ids), free(text);
    mm_tokenizer_free(tok);
    be->ops->free(be);
    return rc;
}
