/* The tiny MetaMorph end to end against the restated reference greedy_decode
 * (tests/golden/tiny/metamorph.jsonl + .safetensors, from make_tiny_model.py): prompt ids
 * with image placeholders, mm_projector outputs, SigLIP visual tokens of the prompt
 * images, greedy text ids and the generated images' visual tokens (KV cache here, full
 * recomputation there), through the library and through `mm-run --image / --generate-image
 * --visual-tokens-out`. argv[1] is the mm-run binary. */
#include <jansson.h>
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/metamorph.h"
#include "model/vision_tower.h"
#include "tests/testutil.h"

#define TOL 1e-4f

static mm_backend *be;
static mm_tokenizer *tok;
static mm_llama *llm;
static mm_metamorph *mm;
static mm_vision_tower vt; /* as every entry point loads it */
static mm_siglip *sig;
static mm_safetensors *gold, *vgold;
static float worst_proj, worst_gen;

static const float *tensor(mm_safetensors *st, const char *key, int64_t numel) {
    const mm_st_tensor *t = mm_safetensors_find(st, key);
    EXPECT(t && t->dtype == MM_DTYPE_F32 && t->numel == numel, "%s missing or wrong size", key);
    return t && t->numel == numel ? t->data : NULL;
}

static void check_line(const char *mm_run, json_t *row, int lineno) {
    const int64_t T = mm->cfg.n_image_tokens, D = mm->cfg.mm_hidden, S = sig->cfg.image_size;
    json_t *msg = json_array_get(json_object_get(row, "messages"), 0), *content = json_object_get(msg, "content");
    json_t *files = json_object_get(row, "images");
    int n_img = (int)json_array_size(files);
    /* the content as inference/demo.py renders it: images first, then the text */
    const char *user_text = json_is_string(content) ? json_string_value(content) : NULL;
    for (size_t i = 0; !user_text && i < json_array_size(content); i++) {
        json_t *part = json_array_get(content, i);
        if (!strcmp(json_string_value(json_object_get(part, "type")), "text"))
            user_text = json_string_value(json_object_get(part, "text"));
    }
    mm_content_part parts[8];
    for (int k = 0; k < n_img && k < 7; k++) parts[k] = (mm_content_part){1, NULL};
    parts[n_img < 7 ? n_img : 7] = (mm_content_part){0, user_text};
    char *text = NULL;
    EXPECT(mm_metamorph_render_content(parts, (size_t)(n_img < 7 ? n_img : 7) + 1, &text) == MM_OK, "%s",
           mm_error_last());
    mm_chat_message m = {"user", text};
    int32_t *marked = NULL;
    size_t nm = 0;
    int n_marked = 0;
    int want_image = json_object_get(row, "assistant_prefix") != NULL;
    EXPECT(mm_metamorph_prompt_encode(tok, &m, 1, want_image, &marked, &nm, &n_marked) == MM_OK, "%s",
           mm_error_last());
    free(text);
    EXPECT(n_marked == n_img && mm_test_ids_equal(json_object_get(row, "prompt_ids"), marked, nm),
           "line %d: prompt ids differ from the reference's", lineno);
    /* visual tokens of the prompt images, through the whole encoder path */
    float *pix = malloc((size_t)(n_img ? n_img : 1) * 3 * S * S * sizeof(float));
    float *toks = malloc((size_t)(n_img ? n_img : 1) * T * D * sizeof(float));
    for (int k = 0; k < n_img; k++) {
        char rel[512];
        snprintf(rel, sizeof rel, "vision/%s", json_string_value(json_array_get(files, k)));
        mm_image img;
        EXPECT(mm_image_load(mm_golden_path(rel), NULL, &img) == MM_OK, "%s", mm_error_last());
        EXPECT(mm_siglip_preprocess(&sig->pp, &img, pix + (size_t)k * 3 * S * S) == MM_OK, "%s", mm_error_last());
        mm_image_free(&img);
    }
    if (n_img) EXPECT(mm_siglip_encode(sig, pix, n_img, (int32_t)T, NULL, toks) == MM_OK, "%s", mm_error_last());
    /* greedy generation with the KV cache */
    mm_kv_cache *kv = NULL;
    EXPECT(mm_kv_cache_init(be, llm->cfg.n_layers, 32, MM_KV_BLOCK_SIZE, llm->cfg.n_kv_heads, llm->cfg.head_dim, &kv) == MM_OK, "%s",
           mm_error_last());
    mm_sampler greedy;
    mm_sampler_init(&greedy, 0.0f, 1.0f, 0, 0);
    int32_t max_pos = (int32_t)json_integer_value(json_object_get(row, "max_new_tokens"));
    mm_metamorph_gen g = {&greedy, max_pos, NULL, NULL, NULL};
    mm_llama_seq seq = {0};
    mm_metamorph_output o;
    EXPECT(mm_metamorph_generate(mm, kv, &seq, marked, nm, toks, n_img, &g, &o) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_test_ids_equal(json_object_get(row, "greedy_ids"), o.ids, o.n_ids), "line %d: greedy ids differ", lineno);
    EXPECT(o.n_positions == json_integer_value(json_object_get(row, "n_positions")) &&
               o.n_images == json_integer_value(json_object_get(row, "n_images")),
           "line %d: %d positions, %d images", lineno, o.n_positions, o.n_images);
    for (int k = 0; k < o.n_images; k++) {
        char key[64];
        snprintf(key, sizeof key, "generated.mm%d.%d", lineno - 1, k);
        const float *want = tensor(gold, key, T * D);
        float d = want ? mm_max_abs_diff(o.images + (size_t)k * T * D, want, (size_t)(T * D)) : INFINITY;
        worst_gen = d > worst_gen ? d : worst_gen;
        EXPECT(d <= TOL, "line %d: generated image %d off by %g", lineno, k, d);
    }
    /* the same through mm-run */
    char maxs[16], out_path[] = "/tmp/mm_visual_XXXXXX";
    int fd = mkstemp(out_path);
    if (fd >= 0) close(fd);
    snprintf(maxs, sizeof maxs, "%d", max_pos);
    char *argv[24] = {(char *)mm_run, "--model", (char *)mm_asset_path("tiny"), "--prompt", (char *)user_text,
                      "--max-tokens", maxs, "--ids", "--threads", "2", "--visual-tokens-out", out_path};
    int a = 12;
    char paths[4][512];
    for (int k = 0; k < n_img && k < 4; k++) {
        snprintf(paths[k], sizeof paths[k], "%s", mm_golden_path(json_string_value(json_array_get(files, k))));
        char rel[512];
        snprintf(rel, sizeof rel, "vision/%s", json_string_value(json_array_get(files, k)));
        snprintf(paths[k], sizeof paths[k], "%s", mm_golden_path(rel));
        argv[a++] = "--image", argv[a++] = paths[k];
    }
    if (want_image) argv[a++] = "--generate-image";
    argv[a] = NULL;
    char *out = mm_test_run_capture(argv);
    EXPECT(out != NULL, "line %d: mm-run failed", lineno);
    int32_t got[256];
    size_t ng = 0;
    for (char *p = out ? strtok(out, " \n") : NULL; p && ng < 256; p = strtok(NULL, " \n")) got[ng++] = (int32_t)atoi(p);
    EXPECT(mm_test_ids_equal(json_object_get(row, "greedy_ids"), got, ng), "line %d: mm-run ids differ", lineno);
    mm_safetensors *vt = NULL;
    EXPECT(mm_safetensors_open(out_path, &vt) == MM_OK && (int)mm_safetensors_count(vt) == o.n_images,
           "line %d: --visual-tokens-out: %s", lineno, mm_error_last());
    for (int k = 0; vt && k < o.n_images; k++) {
        char key[32];
        snprintf(key, sizeof key, "image.%d", k);
        const float *t = tensor(vt, key, T * D);
        EXPECT(t && !memcmp(t, o.images + (size_t)k * T * D, (size_t)(T * D) * sizeof(float)),
               "line %d: mm-run's visual tokens differ from the library's", lineno);
    }
    mm_safetensors_close(vt);
    unlink(out_path);
    free(out);
    mm_metamorph_output_free(&o);
    mm_kv_seq_release(kv, &seq.kv);
    mm_kv_cache_free(kv);
    free(marked), free(pix), free(toks);
}

/* mm_projector of the reference's visual tokens */
static void check_projector(void) {
    const int64_t T = mm->cfg.n_image_tokens, D = mm->cfg.mm_hidden, H = llm->cfg.dim;
    float *e = malloc((size_t)(T * H) * sizeof(float));
    int checked = 0;
    for (size_t i = 0; i < mm_safetensors_count(gold); i++) {
        const char *name = mm_safetensors_name(gold, i);
        if (strncmp(name, "projected.", 10)) continue;
        char key[256];
        snprintf(key, sizeof key, "tokens.%s", name + 10);
        const float *z = tensor(vgold, key, T * D), *want = tensor(gold, name, T * H);
        if (!z || !want) continue;
        EXPECT(mm_metamorph_project(mm, z, T, e) == MM_OK, "%s", mm_error_last());
        float d = mm_max_abs_diff(e, want, (size_t)(T * H));
        worst_proj = d > worst_proj ? d : worst_proj;
        EXPECT(d <= TOL, "%s off by %g", name, d);
        checked++;
    }
    EXPECT(checked == 3, "%d projector goldens", checked);
    free(e);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (mm_backend_init("cpu", 2, &be) != MM_OK || mm_tokenizer_load(mm_asset_path("tiny/llm/tokenizer.json"), &tok) ||
        mm_llama_load(mm_asset_path("tiny/llm"), be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &llm) ||
        mm_metamorph_load(mm_asset_path("tiny/llm"), llm, tok, &mm) ||
        mm_vision_tower_load(mm_asset_path("tiny"), be, &vt) ||
        mm_safetensors_open(mm_golden_path("tiny/metamorph.safetensors"), &gold) ||
        mm_safetensors_open(mm_golden_path("vision/golden.safetensors"), &vgold)) {
        fprintf(stderr, "setup: %s\n", mm_error_last());
        return 1;
    }
    EXPECT(mm_metamorph_is_checkpoint(mm_asset_path("tiny/llm")), "tiny llm is metamorph_llama");
    EXPECT(mm->cfg.image_start_id == 1792 && mm->cfg.image_end_id == 1793 && mm->cfg.mm_hidden == 48 &&
               mm->cfg.vision_select_layer == -1,
           "tiny config");
    sig = vt.sig;
    EXPECT(vt.select_layer == -1 && vt.n_tokens == 64 && sig->run_layers == sig->cfg.n_layers, "tiny tower");
    check_projector();
    FILE *f = fopen(mm_golden_path("tiny/metamorph.jsonl"), "r");
    char line[1 << 16];
    int lineno = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_error_t err;
        json_t *j = json_loads(line, 0, &err);
        EXPECT(j != NULL, "line %d: %s", lineno + 1, err.text);
        if (j) check_line(argv[1], j, ++lineno);
        json_decref(j);
    }
    if (f) fclose(f);
    EXPECT(lineno == 3, "%d golden lines", lineno);
    printf("max |projector - reference| %g, |generated visual tokens - reference| %g\n", worst_proj, worst_gen);
    mm_safetensors_close(gold), mm_safetensors_close(vgold);
    mm_vision_tower_free(&vt), mm_metamorph_free(mm), mm_llama_free(llm), mm_tokenizer_free(tok), mm_backend_free(be);
    return mm_test_finish("test_metamorph");
}
