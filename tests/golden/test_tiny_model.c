/* The embedded tiny model (assets/tiny) end to end against transformers: the
 * chat-template / raw prompt ids, the 32-token greedy continuation (through the
 * library for every line, and printed by `mm-run --ids` for single-message and raw
 * prompts), and the decoded text (tests/golden/tiny/chat_greedy.jsonl, from
 * tools/reference/make_tiny_model.py). argv[1] is the mm-run binary. */
#include <jansson.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/llama.h"
#include "model/tokenizer.h"
#include "tests/testutil.h"

static mm_llama *model;

/* decoded text, skipping special tokens like transformers' decode(skip_special_tokens=True) */
static void check_text(const mm_tokenizer *tok, const int32_t *gen, size_t ng, json_t *want, int lineno) {
    char *text = NULL;
    size_t tl = 0;
    EXPECT(mm_tokenizer_decode(tok, gen, ng, 1, &text, &tl) == MM_OK, "%s", mm_error_last());
    EXPECT(text && tl == json_string_length(want) && !memcmp(text, json_string_value(want), tl),
           "line %d: decoded text differs:\n  got  %s\n  want %s", lineno, text ? text : "", json_string_value(want));
    free(text);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy continuation through the library, stopping after an EOS like generate(). */
static size_t greedy(const int32_t *prompt, size_t n, int32_t *out, size_t max_new) {
    int V = model->cfg.vocab_size;
    mm_kv_cache *kv = NULL;
    mm_kv_cache_init(model->be, model->cfg.n_layers, 64, MM_KV_BLOCK_SIZE, model->cfg.n_kv_heads, model->cfg.head_dim, &kv);
    mm_llama_seq seq = {0}, *sp = &seq;
    float *lg = malloc((size_t)V * sizeof *lg);
    const int32_t *t = prompt;
    int32_t cnt = (int32_t)n;
    size_t ng = 0;
    while (ng < max_new && mm_llama_eval(model, kv, &sp, &t, &cnt, 1, 0, lg) == MM_OK) {
        out[ng] = argmax(lg, V);
        if (mm_llama_is_eos(&model->cfg, out[ng++])) break;
        t = &out[ng - 1], cnt = 1;
    }
    free(lg);
    mm_kv_seq_release(kv, &seq.kv);
    mm_kv_cache_free(kv);
    return ng;
}

static void check_line(const char *mm_run, const mm_tokenizer *tok, json_t *line, int lineno) {
    json_t *msgs = json_object_get(line, "messages"), *raw = json_object_get(line, "raw");
    json_t *want_prompt = json_object_get(line, "prompt_ids"), *want_gen = json_object_get(line, "greedy_ids");
    const char *prompt = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (msgs) {
        size_t nm = json_array_size(msgs);
        mm_chat_message m[8];
        for (size_t i = 0; i < nm && i < 8; i++) {
            m[i].role = json_string_value(json_object_get(json_array_get(msgs, i), "role"));
            m[i].content = json_string_value(json_object_get(json_array_get(msgs, i), "content"));
        }
        prompt = nm == 1 ? m[0].content : NULL; /* mm-run takes one user message */
        EXPECT(mm_chat_encode(tok, m, nm, 1, &ids, &n) == MM_OK, "%s", mm_error_last());
    } else {
        prompt = json_string_value(raw);
        int32_t *body = NULL;
        size_t nb = 0;
        EXPECT(mm_tokenizer_encode(tok, prompt, strlen(prompt), 1, &body, &nb) == MM_OK, "%s", mm_error_last());
        ids = malloc((nb + 1) * sizeof *ids);
        ids[0] = mm_tokenizer_bos_id(tok);
        if (nb) memcpy(ids + 1, body, nb * sizeof *body);
        n = nb + 1;
        free(body);
    }
    EXPECT(ids && mm_test_ids_equal(want_prompt, ids, n), "line %d: prompt ids differ from transformers'", lineno);
    int32_t gen[128];
    size_t max_new = (size_t)json_integer_value(json_object_get(line, "max_new_tokens"));
    EXPECT(json_integer_value(json_object_get(line, "n_images")) == 0 && max_new <= 128,
           "line %d: text-only lines expected (images are test_metamorph's)", lineno);
    size_t ng = greedy(ids, n, gen, json_array_size(want_gen));
    EXPECT(mm_test_ids_equal(want_gen, gen, ng), "line %d: library greedy ids differ from transformers'", lineno);
    free(ids);
    check_text(tok, gen, ng, json_object_get(line, "text"), lineno);
    if (!prompt) return;

    char max_arg[32];
    snprintf(max_arg, sizeof max_arg, "%zu", max_new);
    char *argv[] = {(char *)mm_run, "--model", (char *)mm_asset_path("tiny"), "--prompt", (char *)prompt,
                    "--max-tokens", max_arg, "--ids", "--threads", "2", msgs ? NULL : "--raw", NULL};
    char *out = mm_test_run_capture(argv);
    EXPECT(out != NULL, "line %d: mm-run failed", lineno);
    if (!out) return;
    ng = 0;
    for (char *p = strtok(out, " \n"); p && ng < 128; p = strtok(NULL, " \n")) gen[ng++] = (int32_t)atoi(p);
    EXPECT(mm_test_ids_equal(want_gen, gen, ng), "line %d: mm-run greedy ids differ from transformers' (%zu ids)", lineno, ng);
    free(out);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_tiny_model MM_RUN\n");
        return 2;
    }
    mm_tokenizer *tok = NULL;
    mm_backend *be = NULL;
    if (mm_backend_init("cpu", 2, &be) != MM_OK ||
        mm_llama_load(mm_asset_path("tiny/llm"), be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &model) != MM_OK ||
        mm_tokenizer_load(mm_asset_path("tiny/llm/tokenizer.json"), &tok) != MM_OK) {
        fprintf(stderr, "%s\n", mm_error_last());
        return 1;
    }
    FILE *f = fopen(mm_golden_path("tiny/chat_greedy.jsonl"), "r");
    EXPECT(f != NULL, "no golden");
    char line[1 << 16];
    int lineno = 0;
    while (f && fgets(line, sizeof line, f)) {
        lineno++;
        json_error_t err;
        json_t *j = json_loads(line, JSON_ALLOW_NUL, &err);
        EXPECT(j != NULL, "line %d: %s", lineno, err.text);
        if (j) check_line(argv[1], tok, j, lineno);
        json_decref(j);
    }
    if (f) fclose(f);
    EXPECT(lineno >= 7, "only %d golden lines", lineno);
    mm_tokenizer_free(tok);
    mm_llama_free(model);
    mm_backend_free(be);
    return mm_test_finish("test_tiny_model");
}
