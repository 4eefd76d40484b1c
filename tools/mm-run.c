/* mm-run: the whole model in one process, for trying prompts and scripted checks.
 * Applies MetaMorph's chat template (or --raw: BOS + plain text), streams the
 * completion to stdout as it is generated, and reports prompt and decode speed on
 * stderr. Greedy by default. With a MetaMorph checkpoint (metamorph_llama), images go
 * in with --image (SigLIP visual tokens in front of the prompt text, as the reference
 * demo does) and generated images' visual tokens come out with --visual-tokens-out. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/runtime.h"
#include "common/log.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/manifest.h"
#include "model/metamorph.h"
#include "model/sampler.h"
#include "model/vision_tower.h"
#include "model/tokenizer.h"

#define MAX_IMAGES 16

typedef struct {
    const char *model, *prompt, *backend, *visual_out, *kv_dtype;
    const char *images[MAX_IMAGES];
    int n_images, generate_image;
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
            "  --kv-dtype T        KV cache: auto (default: the checkpoint's dtype), f32 or bf16\n"
            "  --raw               no chat template: BOS + the prompt's tokens\n"
            "  --ids               print generated token ids (one line) instead of text\n"
            "  --image FILE        PNG/JPEG put before the prompt text (repeatable, MetaMorph models)\n"
            "  --generate-image    open the assistant turn with <image_start> (ask for an image)\n"
            "  --visual-tokens-out FILE.safetensors\n"
            "                      write each generated image's visual tokens (image.K: [64, D] f32)\n"
            "  (--max-tokens counts every generated position, visual tokens included)\n");
}

static int parse_args(int argc, char **argv, run_args *a) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 't'},
        {"top-p", required_argument, 0, 'P'},      {"top-k", required_argument, 0, 'k'},
        {"seed", required_argument, 0, 's'},       {"threads", required_argument, 0, 'j'},
        {"backend", required_argument, 0, 'b'},    {"raw", no_argument, 0, 'r'},
        {"ids", no_argument, 0, 'i'},              {"help", no_argument, 0, 'h'},
        {"image", required_argument, 0, 'I'},      {"generate-image", no_argument, 0, 'G'},
        {"visual-tokens-out", required_argument, 0, 'V'}, {"kv-dtype", required_argument, 0, 'K'},
        {0, 0, 0, 0}};
    *a = (run_args){.backend = "cpu", .kv_dtype = "auto", .max_tokens = 256, .top_p = 1.0f};
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
        case 'I':
            if (a->n_images == MAX_IMAGES) {
                fprintf(stderr, "mm-run: at most %d images\n", MAX_IMAGES);
                return -1;
            }
            a->images[a->n_images++] = optarg;
            break;
        case 'G': a->generate_image = 1; break;
        case 'V': a->visual_out = optarg; break;
        case 'K': a->kv_dtype = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc || !a->model || !a->prompt) {
        usage(stderr);
        return -1;
    }
    if (a->raw && (a->n_images || a->generate_image)) {
        fprintf(stderr, "mm-run: --raw takes no images\n");
        return -1;
    }
    return 0;
bad:
    fprintf(stderr, "mm-run: bad value '%s'\n", optarg);
    return -1;
}

/* Prompt ids: the chat template (images, then the text, as inference/demo.py lays them
 * out; placeholders marked) or, with --raw, BOS + the text. *n_images: placeholders. */
static mm_status encode_prompt(const mm_tokenizer *tok, const mm_llama_config *cfg, const run_args *a, int32_t **ids,
                               size_t *n, int *n_images) {
    *n_images = 0;
    if (!a->raw) {
        mm_content_part parts[MAX_IMAGES + 1];
        for (int i = 0; i < a->n_images; i++) parts[i] = (mm_content_part){1, NULL};
        parts[a->n_images] = (mm_content_part){0, a->prompt};
        char *content;
        CHECK(mm_metamorph_render_content(parts, (size_t)a->n_images + 1, &content));
        mm_chat_message msg = {"user", content};
        mm_status s = mm_metamorph_prompt_encode(tok, &msg, 1, a->generate_image, ids, n, n_images);
        free(content);
        return s;
    }
    return mm_metamorph_prompt_encode_raw(tok, cfg->bos_id, a->prompt, ids, n);
}

/* Streams generated ids to stdout as text (complete UTF-8 only) or as ids. */
typedef struct {
    const mm_tokenizer *tok;
    const mm_llama_config *cfg;
    int print_ids, n;
    mm_detok detok;
} printer;

static void print_token(void *ud, int32_t id) {
    printer *p = ud;
    char text[1024];
    p->n++;
    if (p->print_ids) {
        printf(p->n > 1 ? " %d" : "%d", id);
    } else if (!mm_llama_is_eos(p->cfg, id)) {
        int w = mm_detok_push(&p->detok, p->tok, id, text, sizeof text);
        if (w > 0) fwrite(text, 1, (size_t)w, stdout);
    }
    fflush(stdout);
}

static void print_image(void *ud, int index, const float *tokens) {
    (void)ud, (void)tokens;
    fprintf(stderr, "[image %d: visual tokens ready]\n", index);
}

/* SigLIP visual tokens of the --image files: [n_images, n_tokens, D] (malloc'd), from
 * the tower as the model's config names it (mm_vision_tower_load: select layer, token
 * count), exactly as the encoder pool computes them. */
static mm_status encode_images(const run_args *a, mm_backend *be, const mm_metamorph *mm, float **out) {
    *out = NULL;
    if (!a->n_images) return MM_OK;
    mm_vision_tower vt;
    CHECK(mm_vision_tower_load(a->model, be, &vt));
    int64_t S = vt.sig->cfg.image_size, T = vt.n_tokens;
    mm_status s = T == mm->cfg.n_image_tokens && vt.sig->cfg.hidden == mm->cfg.mm_hidden
                      ? MM_OK
                      : MM_ERROR(MM_ERR_INTERNAL, "the vision tower gives %lld x %d tokens, the LLM takes %d x %d",
                                 (long long)T, vt.sig->cfg.hidden, mm->cfg.n_image_tokens, mm->cfg.mm_hidden);
    float *pix = malloc((size_t)(a->n_images * 3 * S * S) * sizeof(float));
    float *tok = malloc((size_t)(a->n_images * T * vt.sig->cfg.hidden) * sizeof(float));
    if (s == MM_OK && (!pix || !tok)) s = MM_ERROR(MM_ERR_NOMEM, "image buffers");
    for (int i = 0; s == MM_OK && i < a->n_images; i++) {
        mm_image img;
        s = mm_image_load(a->images[i], NULL, &img);
        if (s == MM_OK) s = mm_siglip_preprocess(&vt.sig->pp, &img, pix + (size_t)i * 3 * S * S);
        mm_image_free(&img);
    }
    if (s == MM_OK) s = mm_siglip_encode(vt.sig, pix, a->n_images, (int32_t)T, NULL, tok);
    free(pix);
    mm_vision_tower_free(&vt);
    if (s != MM_OK) free(tok);
    else *out = tok;
    return s;
}

static mm_status write_visual_tokens(const char *path, const mm_metamorph_output *o, int64_t T, int64_t D) {
    mm_st_write_tensor *t = calloc((size_t)(o->n_images ? o->n_images : 1), sizeof *t);
    char (*names)[32] = calloc((size_t)(o->n_images ? o->n_images : 1), sizeof *names);
    mm_status s = t && names ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "visual token output");
    for (int k = 0; s == MM_OK && k < o->n_images; k++) {
        snprintf(names[k], sizeof names[k], "image.%d", k);
        t[k] = (mm_st_write_tensor){names[k], MM_DTYPE_F32, 2, {T, D}, o->images + (size_t)k * T * D};
    }
    if (s == MM_OK) s = mm_safetensors_write(path, t, (size_t)o->n_images);
    free(t), free(names);
    return s;
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
    mm_metamorph *mm = NULL;
    mm_kv_cache *kv = NULL;
    int32_t *prompt = NULL;
    float *logits = NULL, *images = NULL;
    mm_llama_seq seq = {0};
    mm_metamorph_output gen_out = {0};
    size_t n_prompt = 0;
    int64_t rows = 0;
    CHECK_GOTO(mm_backend_init(a->backend, a->threads, &be), s, out);
    CHECK_GOTO(mm_tokenizer_load(tok_path, &tok), s, out);
    CHECK_GOTO(mm_llama_load(paths.llm, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m), s, out);
    const mm_llama_config *cfg = &m->cfg;
    int is_mm = mm_metamorph_is_checkpoint(paths.llm);
    if (!is_mm && (a->n_images || a->generate_image || a->visual_out)) {
        s = MM_ERROR(MM_ERR_INVALID, "%s: images need a MetaMorph (metamorph_llama) checkpoint", paths.llm);
        goto out;
    }
    if (is_mm) CHECK_GOTO(mm_metamorph_load(paths.llm, m, tok, &mm), s, out);
    mm_sampler sampler;
    CHECK_GOTO(mm_sampler_init(&sampler, a->temperature, a->top_p, a->top_k, a->seed), s, out);
    int n_marked_images = 0;
    CHECK_GOTO(encode_prompt(tok, cfg, a, &prompt, &n_prompt, &n_marked_images), s, out);
    if (mm) CHECK_GOTO(encode_images(a, be, mm, &images), s, out);
    rows = (int64_t)n_prompt + (int64_t)n_marked_images * (mm ? mm->cfg.n_image_tokens - 1 : 0);
    int32_t total = (int32_t)(rows + a->max_tokens > cfg->max_pos ? cfg->max_pos : rows + a->max_tokens);
    if (rows >= cfg->max_pos) {
        s = MM_ERROR(MM_ERR_INVALID, "prompt has %lld rows, the context is %d", (long long)rows, cfg->max_pos);
        goto out;
    }
    mm_dtype kv_dtype;
    CHECK_GOTO(mm_llama_kv_dtype_parse(m, a->kv_dtype, &kv_dtype), s, out);
    CHECK_GOTO(mm_kv_cache_init_typed(be, cfg->n_layers, mm_kv_cache_blocks_for(total, MM_KV_BLOCK_SIZE), MM_KV_BLOCK_SIZE, cfg->n_kv_heads,
                                      cfg->head_dim, kv_dtype, &kv), s, out);
    logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    CHECK_GOTO(CHECK_ALLOC(logits), s, out);

    printer pr = {.tok = tok, .cfg = cfg, .print_ids = a->print_ids};
    mm_detok_init(&pr.detok, 1);
    double t0 = mm_now_s(), t1;
    if (mm) {
        /* MetaMorph generation: text, and image mode after <image_start> */
        mm_metamorph_gen g = {&sampler, a->max_tokens, print_token, print_image, &pr};
        CHECK_GOTO(mm_metamorph_generate(mm, kv, &seq, prompt, n_prompt, images, a->n_images, &g, &gen_out), s, out);
        t1 = t0; /* prompt and decode are not timed apart here */
        rows = gen_out.n_prompt;
        if (a->visual_out)
            CHECK_GOTO(write_visual_tokens(a->visual_out, &gen_out, mm->cfg.n_image_tokens, mm->cfg.mm_hidden), s, out);
    } else {
        mm_llama_seq *seqs[1] = {&seq};
        const int32_t *toks[1] = {prompt};
        int32_t counts[1] = {(int32_t)n_prompt};
        CHECK_GOTO(mm_llama_eval(m, kv, seqs, toks, counts, 1, 0, logits), s, out);
        t1 = mm_now_s();
        for (int n_gen = 0; n_gen < a->max_tokens;) {
            int32_t id;
            CHECK_GOTO(mm_sampler_pick(&sampler, be, logits, cfg->vocab_size, &id), s, out);
            n_gen++;
            print_token(&pr, id);
            if (mm_llama_is_eos(cfg, id) || n_gen == a->max_tokens || seq.kv.n_tokens >= cfg->max_pos) break;
            toks[0] = &id, counts[0] = 1;
            CHECK_GOTO(mm_llama_eval(m, kv, seqs, toks, counts, 1, 0, logits), s, out);
        }
    }
    double t2 = mm_now_s();
    if (!a->print_ids) {
        char text[64];
        int w = mm_detok_flush(&pr.detok, text, sizeof text);
        if (w > 0) fwrite(text, 1, (size_t)w, stdout);
    }
    printf("\n");
    int n_pos = mm ? gen_out.n_positions : pr.n;
    if (mm)
        fprintf(stderr, "prompt: %lld rows | generated: %d positions (%d images) in %.3f s, %.1f positions/s\n",
                (long long)rows, n_pos, gen_out.n_images, t2 - t0, n_pos / (t2 - t0));
    else
        fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s | decode: %d tokens, %.1f tokens/s\n", n_prompt,
                (double)n_prompt / (t1 - t0), n_pos, n_pos > 1 ? (double)(n_pos - 1) / (t2 - t1) : 0.0);
out:
    if (kv) mm_kv_seq_release(kv, &seq.kv);
    mm_metamorph_output_free(&gen_out);
    free(logits), free(prompt), free(images);
    mm_kv_cache_free(kv);
    mm_metamorph_free(mm);
    mm_llama_free(m);
    mm_tokenizer_free(tok);
    mm_backend_free(be);
    return s;
}

int main(int argc, char **argv) {
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    run_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    mm_status s = run(&a);
    if (s != MM_OK) {
        fprintf(stderr, "mm-run: %s: %s\n", mm_status_str(s), mm_error_last());
        return 1;
    }
    return 0;
}
