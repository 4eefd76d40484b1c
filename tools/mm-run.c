/* mm-run: the whole model in one process, for trying prompts and scripted checks.
 * Applies MetaMorph's chat template (or --raw: BOS + plain text), streams the
 * completion to stdout as it is generated, and reports prompt and decode speed on
 * stderr. Greedy by default. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/manifest.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

typedef struct {
    const char *model, *prompt, *backend;
    int max_tokens, top_k, threads, raw, print_ids;
    float temperature, top_p;
    unsigned long long seed;
} run_args;

static void usage(FILE *f) {
    fprintf(f,
            "usage: mm-run --model DIR --prompt TEXT [options]\n"
            "  --model DIR         model root (metamorph.json) or an HF LLaMA directory\n"
            "  --prompt TEXT       user message (or plain text with --raw)\n"
            "  --max-tokens N      new tokens at most (default 256)\n"
            "  --temperature T     0 = greedy (default 0)\n"
            "  --top-p P           nucleus sampling mass in (0,1] (default 1)\n"
            "  --top-k K           keep the K most likely tokens, 0 = off (default 0)\n"
            "  --seed S            sampling seed (default 0)\n"
            "  --threads N         CPU threads (default: all cores)\n"
            "  --backend NAME      cpu (default) or cpu-ref\n"
            "  --raw               no chat template: BOS + the prompt's tokens\n"
            "  --ids               print generated token ids (one line) instead of text\n");
}

static int parse_args(int argc, char **argv, run_args *a) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 't'},
        {"top-p", required_argument, 0, 'P'},      {"top-k", required_argument, 0, 'k'},
        {"seed", required_argument, 0, 's'},       {"threads", required_argument, 0, 'j'},
        {"backend", required_argument, 0, 'b'},    {"raw", no_argument, 0, 'r'},
        {"ids", no_argument, 0, 'i'},              {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    *a = (run_args){.backend = "cpu", .max_tokens = 256, .top_p = 1.0f};
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'p': a->prompt = optarg; break;
        case 'n': a->max_tokens = (int)strtol(optarg, &end, 10); if (*end || a->max_tokens < 0) goto bad; break;
        case 't': a->temperature = strtof(optarg, &end); if (*end) goto bad; break;
        case 'P': a->top_p = strtof(optarg, &end); if (*end) goto bad; break;
        case 'k': a->top_k = (int)strtol(optarg, &end, 10); if (*end) goto bad; break;
        case 's': a->seed = strtoull(optarg, &end, 10); if (*end) goto bad; break;
        case 'j': a->threads = (int)strtol(optarg, &end, 10); if (*end) goto bad; break;
        case 'b': a->backend = optarg; break;
        case 'r': a->raw = 1; break;
        case 'i': a->print_ids = 1; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc || !a->model || !a->prompt) {
        usage(stderr);
        return -1;
    }
    return 0;
bad:
    fprintf(stderr, "mm-run: bad value '%s'\n", optarg);
    return -1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static mm_status encode_prompt(const mm_tokenizer *tok, const mm_llama_config *cfg, const run_args *a, int32_t **ids,
                               size_t *n) {
    if (!a->raw) {
        mm_chat_message msg = {"user", a->prompt};
        return mm_chat_encode(tok, &msg, 1, 1, ids, n);
    }
    int32_t *body;
    size_t nb;
    CHECK(mm_tokenizer_encode(tok, a->prompt, strlen(a->prompt), 1, &body, &nb));
    int32_t bos = cfg->bos_id >= 0 ? cfg->bos_id : mm_tokenizer_bos_id(tok);
    int has_bos = bos >= 0;
    *ids = malloc((nb + 1) * sizeof **ids);
    if (!*ids) {
        free(body);
        return MM_ERROR(MM_ERR_NOMEM, "prompt ids");
    }
    if (has_bos) (*ids)[0] = bos;
    memcpy(*ids + has_bos, body, nb * sizeof *body);
    *n = nb + (size_t)has_bos;
    free(body);
    return MM_OK;
}

static mm_status run(const run_args *a) {
    mm_status s;
    mm_model_paths paths;
    CHECK(mm_model_paths_resolve(a->model, &paths));
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", paths.llm);
    mm_backend *be = NULL;
    mm_tokenizer *tok = NULL;
    mm_llama *m = NULL;
    mm_kv_cache *kv = NULL;
    int32_t *prompt = NULL;
    float *logits = NULL;
    mm_llama_seq seq = {0};
    size_t n_prompt = 0;
    CHECK_GOTO(mm_backend_init(a->backend, a->threads, &be), s, out);
    CHECK_GOTO(mm_tokenizer_load(tok_path, &tok), s, out);
    CHECK_GOTO(mm_llama_load(paths.llm, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m), s, out);
    const mm_llama_config *cfg = &m->cfg;
    mm_sampler sampler;
    CHECK_GOTO(mm_sampler_init(&sampler, a->temperature, a->top_p, a->top_k, a->seed), s, out);
    CHECK_GOTO(encode_prompt(tok, cfg, a, &prompt, &n_prompt), s, out);
    int32_t total = (int32_t)n_prompt + a->max_tokens;
    if (total > cfg->max_pos) total = cfg->max_pos;
    if ((int32_t)n_prompt >= cfg->max_pos) {
        s = MM_ERROR(MM_ERR_INVALID, "prompt has %zu tokens, the context is %d", n_prompt, cfg->max_pos);
        goto out;
    }
    CHECK_GOTO(mm_kv_cache_init_typed(be, cfg->n_layers, mm_kv_cache_blocks_for(total, 16), 16, cfg->n_kv_heads,
                                      cfg->head_dim, mm_llama_kv_dtype(m), &kv), s, out);
    logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    CHECK_GOTO(CHECK_ALLOC(logits), s, out);

    mm_llama_seq *seqs[1] = {&seq};
    double t0 = now_s();
    const int32_t *toks[1] = {prompt};
    int32_t counts[1] = {(int32_t)n_prompt};
    CHECK_GOTO(mm_llama_eval(m, kv, seqs, toks, counts, 1, 0, logits), s, out);
    double t1 = now_s();
    mm_detok detok;
    mm_detok_init(&detok, 1);
    char text[1024];
    int n_gen = 0;
    while (n_gen < a->max_tokens) {
        int32_t id;
        CHECK_GOTO(mm_sampler_pick(&sampler, be, logits, cfg->vocab_size, &id), s, out);
        n_gen++;
        int eos = mm_llama_is_eos(cfg, id);
        if (a->print_ids) {
            printf(n_gen > 1 ? " %d" : "%d", id);
        } else if (!eos) {
            int w = mm_detok_push(&detok, tok, id, text, sizeof text);
            if (w > 0) fwrite(text, 1, (size_t)w, stdout);
        }
        fflush(stdout);
        if (eos || n_gen == a->max_tokens || seq.kv.n_tokens >= cfg->max_pos) break;
        toks[0] = &id, counts[0] = 1;
        CHECK_GOTO(mm_llama_eval(m, kv, seqs, toks, counts, 1, 0, logits), s, out);
    }
    double t2 = now_s();
    if (!a->print_ids) {
        int w = mm_detok_flush(&detok, text, sizeof text);
        if (w > 0) fwrite(text, 1, (size_t)w, stdout);
    }
    printf("\n");
    fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s | decode: %d tokens, %.1f tokens/s\n", n_prompt,
            (double)n_prompt / (t1 - t0), n_gen, n_gen > 1 ? (double)(n_gen - 1) / (t2 - t1) : 0.0);
out:
    if (kv) mm_kv_seq_release(kv, &seq.kv);
    free(logits);
    free(prompt);
    mm_kv_cache_free(kv);
    mm_llama_free(m);
    mm_tokenizer_free(tok);
    mm_backend_free(be);
    return s;
}

int main(int argc, char **argv) {
    run_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    mm_status s = run(&a);
    if (s != MM_OK) {
        fprintf(stderr, "mm-run: %s: %s\n", mm_status_str(s), mm_error_last());
        return 1;
    }
    return 0;
}
