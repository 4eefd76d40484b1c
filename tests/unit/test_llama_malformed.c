/* Malformed LLaMA checkpoints must fail to load with an error that names the file and
 * the tensor (or key), never crash or leak. Built with AddressSanitizer too. Each case
 * copies the tiny "mha" golden checkpoint into a temp dir and breaks one thing. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/safetensors.h"
#include "model/llama.h"
#include "tests/testutil.h"

static char tmpdir[] = "/tmp/mm-malformed-XXXXXX";

static void write_text(const char *name, const char *text) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    s[n] = 0;
    fclose(f);
    return s;
}

typedef enum { KEEP, DROP, RESHAPE, RETYPE } mutation;

/* Rewrites tmpdir/model.safetensors from the golden one, mutating tensor `target`. */
static void write_model(const char *golden_dir, const char *target, mutation mut) {
    mm_safetensors *st = NULL;
    if (mm_safetensors_open(golden_dir, &st) != MM_OK) {
        EXPECT(0, "%s", mm_error_last());
        return;
    }
    size_t n = mm_safetensors_count(st), k = 0;
    mm_st_write_tensor *w = calloc(n, sizeof *w);
    for (size_t i = 0; i < n; i++) {
        const mm_st_tensor *t = mm_safetensors_find(st, mm_safetensors_name(st, i));
        int hit = target && !strcmp(t->name, target);
        if (hit && mut == DROP) continue;
        w[k] = (mm_st_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(w[k].shape, t->shape, sizeof t->shape);
        if (hit && mut == RESHAPE) w[k].shape[0] = t->shape[1], w[k].shape[1] = t->shape[0]; /* transposed */
        if (hit && mut == RETYPE) w[k].dtype = MM_DTYPE_I32;                                  /* same bytes */
        k++;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    EXPECT(mm_safetensors_write(path, w, k) == MM_OK, "%s", mm_error_last());
    free(w);
    mm_safetensors_close(st);
}

/* Loading must fail with `want` and a message containing both needles. */
static void expect_load_error(const char *what, mm_status want, const char *needle1, const char *needle2) {
    mm_backend *be = NULL;
    mm_llama *m = NULL;
    mm_backend_cpu_ref_init(&be);
    mm_status s = mm_llama_load(tmpdir, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m);
    const char *msg = mm_error_last();
    EXPECT(s == want, "%s: status %s, want %s (%s)", what, mm_status_str(s), mm_status_str(want), msg);
    EXPECT(m == NULL, "%s: model returned on failure", what);
    EXPECT(strstr(msg, needle1) != NULL, "%s: message lacks '%s': %s", what, needle1, msg);
    EXPECT(!needle2 || strstr(msg, needle2) != NULL, "%s: message lacks '%s': %s", what, needle2, msg);
    mm_llama_free(m);
    mm_backend_free(be);
}

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    char golden_dir[4096], path[4200];
    snprintf(golden_dir, sizeof golden_dir, "%s", mm_golden_path("llama/mha"));
    snprintf(path, sizeof path, "%s/config.json", golden_dir);
    char *config = read_text(path);
    EXPECT(config != NULL, "cannot read %s", path);
    if (!config) return mm_test_finish("test_llama_malformed");
    write_text("config.json", config);

    /* sanity: the untouched copy loads */
    write_model(golden_dir, NULL, KEEP);
    mm_backend *be = NULL;
    mm_llama *m = NULL;
    mm_backend_cpu_ref_init(&be);
    EXPECT(mm_llama_load(tmpdir, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &m) == MM_OK, "%s", mm_error_last());
    mm_llama_free(m);
    mm_backend_free(be);

    write_model(golden_dir, "model.layers.1.mlp.up_proj.weight", DROP);
    expect_load_error("missing tensor", MM_ERR_NOT_FOUND, "model.layers.1.mlp.up_proj.weight", "model.safetensors");
    write_model(golden_dir, "model.layers.0.mlp.gate_proj.weight", RESHAPE); /* [100,48] -> [48,100] */
    expect_load_error("wrong shape", MM_ERR_FORMAT, "model.layers.0.mlp.gate_proj.weight", "model.safetensors");
    write_model(golden_dir, "model.layers.0.self_attn.o_proj.weight", RETYPE);
    expect_load_error("wrong dtype", MM_ERR_FORMAT, "model.layers.0.self_attn.o_proj.weight", "I32");
    write_model(golden_dir, "lm_head.weight", DROP);
    expect_load_error("missing lm_head", MM_ERR_NOT_FOUND, "lm_head.weight", NULL);

    /* a truncated file */
    write_model(golden_dir, NULL, KEEP);
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    EXPECT(truncate(path, 5000) == 0, "truncate");
    expect_load_error("truncated file", MM_ERR_FORMAT, "model.safetensors", NULL);
    unlink(path);
    expect_load_error("no weights", MM_ERR_NOT_FOUND, tmpdir, NULL);

    /* configs */
    write_model(golden_dir, NULL, KEEP);
    write_text("config.json", "{\"hidden_size\": 48, \"num_hidden_layers\": ");
    expect_load_error("bad JSON", MM_ERR_FORMAT, "config.json", NULL);
    write_text("config.json", "{\"hidden_size\": \"48\"}");
    expect_load_error("wrong type", MM_ERR_FORMAT, "config.json", "hidden_size");
    write_text("config.json", "{\"model_type\": \"llama\", \"hidden_size\": 48}");
    expect_load_error("missing keys", MM_ERR_FORMAT, "config.json", "num_hidden_layers");
    write_text("config.json", "{\"model_type\": \"gpt2\"}");
    expect_load_error("other model", MM_ERR_UNSUPPORTED, "config.json", "gpt2");
    char *big = strstr(config, "\"hidden_size\": 48");
    EXPECT(big != NULL, "golden config has no hidden_size 48");
    if (big) {
        memcpy(big, "\"hidden_size\": 64", 17); /* config disagrees with the weights */
        write_text("config.json", config);
        expect_load_error("config vs weights", MM_ERR_FORMAT, "model.embed_tokens.weight", "model.safetensors");
    }
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    unlink(path);
    expect_load_error("no config", MM_ERR_NOT_FOUND, "config.json", NULL);
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    free(config);
    return mm_test_finish("test_llama_malformed");
}
