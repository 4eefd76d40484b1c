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

/* config.json = the golden one with key set to the JSON text value (key2/value2 too when
 * given; "null" removes a key's meaning, as HF configs write it). */
static void write_config_with(const char *golden, const char *key, const char *value, const char *key2,
                              const char *value2) {
    json_error_t err;
    json_t *root = json_loads(golden, 0, &err);
    json_t *v = json_loads(value, JSON_DECODE_ANY, &err), *v2 = key2 ? json_loads(value2, JSON_DECODE_ANY, &err) : NULL;
    EXPECT(root && v && (!key2 || v2), "test JSON for %s: %s", key, err.text);
    if (!root || !v) return;
    json_object_set_new(root, key, v);
    if (v2) json_object_set_new(root, key2, v2);
    char *text = json_dumps(root, JSON_INDENT(1));
    write_text("config.json", text);
    free(text);
    json_decref(root);
}

typedef struct {
    const char *key, *value, *key2, *value2;
    mm_status want;
    const char *needle1, *needle2; /* the message names the key and the value */
} config_case;

/* Each refused as transformers refuses it, or as a value that cannot be the model it
 * claims (a size read into 32 bits would silently become another one). */
static const config_case bad_configs[] = {
    {"hidden_size", "4294967392", NULL, NULL, MM_ERR_FORMAT, "'hidden_size'", "4294967392"},
    {"num_hidden_layers", "4294967298", NULL, NULL, MM_ERR_FORMAT, "'num_hidden_layers'", "4294967298"},
    {"num_attention_heads", "4294967300", NULL, NULL, MM_ERR_FORMAT, "'num_attention_heads'", "4294967300"},
    {"vocab_size", "4294967553", NULL, NULL, MM_ERR_FORMAT, "'vocab_size'", "4294967553"},
    {"intermediate_size", "4294967396", NULL, NULL, MM_ERR_FORMAT, "'intermediate_size'", "4294967396"},
    {"head_dim", "4294967308", NULL, NULL, MM_ERR_FORMAT, "'head_dim'", "4294967308"},
    {"head_dim", "13", NULL, NULL, MM_ERR_FORMAT, "'head_dim'", "13"},
    {"max_position_embeddings", "10000000000", NULL, NULL, MM_ERR_FORMAT, "'max_position_embeddings'", "10000000000"},
    {"max_position_embeddings", "2147483648", NULL, NULL, MM_ERR_FORMAT, "'max_position_embeddings'", "2147483648"},
    {"max_position_embeddings", "1e10", NULL, NULL, MM_ERR_FORMAT, "'max_position_embeddings'", "must be an integer"},
    {"max_position_embeddings", "0", NULL, NULL, MM_ERR_FORMAT, "'max_position_embeddings'", "= 0"},
    {"num_key_value_heads", "3", NULL, NULL, MM_ERR_FORMAT, "'num_key_value_heads'", "3"},
    {"num_key_value_heads", "8", NULL, NULL, MM_ERR_FORMAT, "'num_key_value_heads'", "8"},
    {"hidden_size", "50", "head_dim", "null", MM_ERR_FORMAT, "'hidden_size'", "50"},
    {"rms_norm_eps", "-1", NULL, NULL, MM_ERR_FORMAT, "'rms_norm_eps'", "-1"},
    {"rope_theta", "0", NULL, NULL, MM_ERR_FORMAT, "'rope_theta'", "= 0"},
    {"rope_theta", "\"1e4\"", NULL, NULL, MM_ERR_FORMAT, "'rope_theta'", "\"1e4\""},
    {"rope_scaling", "\"llama3\"", NULL, NULL, MM_ERR_FORMAT, "'rope_scaling'", "\"llama3\""},
    {"rope_scaling", "[8.0]", NULL, NULL, MM_ERR_FORMAT, "'rope_scaling'", "[8.0]"},
    {"rope_scaling", "{}", NULL, NULL, MM_ERR_FORMAT, "'rope_scaling'", "rope_type"},
    {"rope_scaling", "{\"factor\": 8.0}", NULL, NULL, MM_ERR_FORMAT, "'rope_scaling'", "rope_type"},
    {"rope_scaling", "{\"rope_type\": \"llama3\"}", NULL, NULL, MM_ERR_FORMAT, "'rope_scaling.factor'", "missing"},
    {"rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0}",
     NULL, NULL, MM_ERR_FORMAT, "'rope_scaling.original_max_position_embeddings'", "missing"},
    {"rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4.0, \"high_freq_factor\": 1.0, "
     "\"original_max_position_embeddings\": 64}", NULL, NULL, MM_ERR_FORMAT, "'rope_scaling.high_freq_factor'", "= 1"},
    {"rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
     "\"original_max_position_embeddings\": 64.5}", NULL, NULL, MM_ERR_FORMAT, "'original_max_position_embeddings'", "64.5"},
    {"rope_scaling", "{\"rope_type\": \"linear\"}", NULL, NULL, MM_ERR_FORMAT, "'rope_scaling.factor'", "missing"},
    {"rope_scaling", "{\"rope_type\": \"linear\", \"factor\": \"2\"}", NULL, NULL, MM_ERR_FORMAT, "'factor'", "\"2\""},
    {"rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 0}", NULL, NULL, MM_ERR_FORMAT, "'factor'", "= 0"},
    {"rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}", NULL, NULL, MM_ERR_UNSUPPORTED, "rope_type", "yarn"},
    {"rope_scaling", "{\"rope_type\": \"foo\"}", NULL, NULL, MM_ERR_UNSUPPORTED, "rope_type", "foo"},
    {"rope_scaling", "{\"type\": 3}", NULL, NULL, MM_ERR_FORMAT, "'type'", "3"},
    {"eos_token_id", "[1, 300]", NULL, NULL, MM_ERR_FORMAT, "'eos_token_id'", "300"},
    {"bos_token_id", "257", NULL, NULL, MM_ERR_FORMAT, "'bos_token_id'", "257"},
    {"hidden_act", "\"gelu\"", NULL, NULL, MM_ERR_UNSUPPORTED, "'hidden_act'", "gelu"},
    {"attention_bias", "1", NULL, NULL, MM_ERR_FORMAT, "'attention_bias'", "= 1"},
    {"model_type", "\"ll\\u0007ama\\u001b[2J\"", NULL, NULL, MM_ERR_UNSUPPORTED, "'model_type'", "ll\\x07ama\\x1b[2J"},
};

/* Accepted, with the RoPE that transformers computes for them. */
typedef struct {
    const char *rope_scaling;
    mm_rope_type type;
    float factor;
} rope_case;

static const rope_case good_ropes[] = {
    {"null", MM_ROPE_DEFAULT, 0},
    {"{\"rope_type\": \"default\"}", MM_ROPE_DEFAULT, 0},
    {"{\"type\": \"linear\", \"factor\": 2.0}", MM_ROPE_LINEAR, 2.0f}, /* legacy key */
    {"{\"type\": \"linear\", \"rope_type\": \"llama3\", \"factor\": 3.0}", MM_ROPE_LINEAR, 3.0f}, /* LlamaConfig: type wins */
    {"{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
     "\"original_max_position_embeddings\": 8192}", MM_ROPE_LLAMA3, 8.0f}, /* > max_position_embeddings: a warning there */
};

static void test_configs(const char *golden) {
    for (size_t i = 0; i < sizeof bad_configs / sizeof *bad_configs; i++) {
        const config_case *c = &bad_configs[i];
        char what[160];
        snprintf(what, sizeof what, "config %s = %s", c->key, c->value);
        write_config_with(golden, c->key, c->value, c->key2, c->value2);
        expect_load_error(what, c->want, c->needle1, c->needle2);
        const char *msg = mm_error_last();
        for (const char *p = msg; *p; p++)
            EXPECT((unsigned char)*p >= 0x20 && *p != 0x7f, "%s: a control byte in the message", what);
        EXPECT(strstr(msg, "config.json") != NULL, "%s: the file is not named: %s", what, msg);
    }
    for (size_t i = 0; i < sizeof good_ropes / sizeof *good_ropes; i++) {
        write_config_with(golden, "rope_scaling", good_ropes[i].rope_scaling, NULL, NULL);
        mm_llama_config cfg;
        mm_status s = mm_llama_config_load(tmpdir, &cfg);
        EXPECT(s == MM_OK && cfg.rope_type == good_ropes[i].type &&
                   (cfg.rope_type == MM_ROPE_DEFAULT || cfg.rope_factor == good_ropes[i].factor),
               "rope_scaling %s: %s", good_ropes[i].rope_scaling, s == MM_OK ? "another RoPE" : mm_error_last());
    }
    write_text("config.json", golden);
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
    test_configs(config);
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
