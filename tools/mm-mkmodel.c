/* mm-mkmodel: writes a random-weight LLaMA checkpoint in the HF layout (config.json,
 * sharded safetensors + model.safetensors.index.json, generation_config.json) at any
 * size, for benchmarks and load tests. Weights are deterministic from --seed. Shards
 * are generated and written one at a time, so an 8B model needs ~5 GB of RAM. */
#include <dirent.h>
#include <errno.h>
#include <unistd.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/dtype.h"
#include "common/rng.h"
#include "common/safetensors.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "tools/mkmodel.h"
#include "tools/q8_convert.h"

typedef struct {
    const char *name;
    int dim, layers, heads, kv_heads, hidden, vocab, max_pos, tied, llama3_rope;
    float theta;
} preset;

static const preset presets[] = {
    {"tiny", 64, 2, 4, 2, 172, 512, 2048, 0, 1, 500000.0f},
    {"110m", 768, 12, 12, 12, 2048, 32000, 1024, 1, 0, 10000.0f}, /* llama2.c stories110M shapes */
    {"llama3-8b", 4096, 32, 32, 8, 14336, 128256, 131072, 0, 1, 500000.0f},
};

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];
    int is_norm;
} tensor_spec;

/* Fills a tensor: norms are 1, matrices uniform in [-a, a] with a = sqrt(3)*0.02 (std 0.02). */
void fill(void *data, mm_dtype dt, int64_t n, int is_norm, uint64_t *rng) {
    const float a = 0.0346410162f;
    for (int64_t i = 0; i < n; i++) {
        float v = is_norm ? 1.0f : (mm_rng_uniform(rng) * 2.0f - 1.0f) * a;
        if (dt == MM_DTYPE_F32) ((float *)data)[i] = v;
        else if (dt == MM_DTYPE_BF16) ((uint16_t *)data)[i] = mm_f32_to_bf16(v);
        else ((uint16_t *)data)[i] = mm_f32_to_f16(v);
    }
}

static int spec_list(const preset *p, tensor_spec *out) {
    int n = 0, hd = p->dim / p->heads;
#define T(nd, r, c, norm, ...)                                                                     \
    do {                                                                                           \
        snprintf(out[n].name, sizeof out[n].name, __VA_ARGS__);                                    \
        out[n].ndim = nd, out[n].shape[0] = r, out[n].shape[1] = c, out[n].is_norm = norm;         \
        n++;                                                                                       \
    } while (0)
    T(2, p->vocab, p->dim, 0, "model.embed_tokens.weight");
    for (int l = 0; l < p->layers; l++) {
        T(1, p->dim, 0, 1, "model.layers.%d.input_layernorm.weight", l);
        T(2, p->heads * hd, p->dim, 0, "model.layers.%d.self_attn.q_proj.weight", l);
        T(2, p->kv_heads * hd, p->dim, 0, "model.layers.%d.self_attn.k_proj.weight", l);
        T(2, p->kv_heads * hd, p->dim, 0, "model.layers.%d.self_attn.v_proj.weight", l);
        T(2, p->dim, p->heads * hd, 0, "model.layers.%d.self_attn.o_proj.weight", l);
        T(1, p->dim, 0, 1, "model.layers.%d.post_attention_layernorm.weight", l);
        T(2, p->hidden, p->dim, 0, "model.layers.%d.mlp.gate_proj.weight", l);
        T(2, p->hidden, p->dim, 0, "model.layers.%d.mlp.up_proj.weight", l);
        T(2, p->dim, p->hidden, 0, "model.layers.%d.mlp.down_proj.weight", l);
    }
    T(1, p->dim, 0, 1, "model.norm.weight");
    if (!p->tied) T(2, p->vocab, p->dim, 0, "lm_head.weight");
#undef T
    return n;
}

static int64_t spec_numel(const tensor_spec *t) { return t->ndim == 1 ? t->shape[0] : t->shape[0] * t->shape[1]; }

static int write_json(const char *path, json_t *j) {
    int rc = json_dump_file(j, path, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    if (rc) fprintf(stderr, "mm-mkmodel: cannot write %s\n", path);
    return rc;
}

/* The special ids config.json names, from the tokenizer the checkpoint ships. */
typedef struct {
    int32_t bos, eos[2];
    int n_eos;
} special_ids;

/* Loads the tokenizer at path: its BOS (<|begin_of_text|>) and EOS (<|end_of_text|>,
 * <|eot_id|>) ids, and a check that every id fits the model's vocabulary. */
static int tokenizer_ids(const char *path, int32_t vocab, special_ids *sp) {
    mm_tokenizer *tok;
    if (mm_tokenizer_load(path, &tok) != MM_OK) {
        fprintf(stderr, "mm-mkmodel: %s\n", mm_error_last());
        return -1;
    }
    int32_t n = mm_tokenizer_n_vocab(tok);
    sp->bos = mm_tokenizer_token_id(tok, "<|begin_of_text|>");
    if (sp->bos < 0) sp->bos = mm_tokenizer_bos_id(tok);
    sp->n_eos = 0;
    static const char *const EOS[] = {"<|end_of_text|>", "<|eot_id|>"};
    for (int i = 0; i < 2; i++) {
        int32_t id = mm_tokenizer_token_id(tok, EOS[i]);
        if (id >= 0) sp->eos[sp->n_eos++] = id;
    }
    mm_tokenizer_free(tok);
    if (n > vocab) {
        fprintf(stderr, "mm-mkmodel: %s has %d tokens, more than the model's vocabulary of %d (raise --vocab)\n", path, n,
                vocab);
        return -1;
    }
    if (sp->bos < 0 || sp->n_eos == 0) {
        fprintf(stderr, "mm-mkmodel: %s has no <|begin_of_text|> or no <|end_of_text|>/<|eot_id|> token\n", path);
        return -1;
    }
    return 0;
}

static int write_configs(const char *dir, const preset *p, mm_dtype dt, const special_ids *sp) {
    char path[4096];
    json_t *c = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b, s:i, s:[i,i], s:s, s:b, s:b, s:s}",
                          "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", p->dim,
                          "num_hidden_layers", p->layers, "num_attention_heads", p->heads, "num_key_value_heads",
                          p->kv_heads, "intermediate_size", p->hidden, "vocab_size", p->vocab,
                          "max_position_embeddings", p->max_pos, "rms_norm_eps", 1e-5, "rope_theta", (double)p->theta,
                          "tie_word_embeddings", p->tied, "bos_token_id", sp->bos, "eos_token_id", sp->eos[0],
                          sp->eos[sp->n_eos - 1],
                          "hidden_act", "silu", "attention_bias", 0, "mlp_bias", 0, "torch_dtype",
                          dt == MM_DTYPE_F32 ? "float32" : dt == MM_DTYPE_BF16 ? "bfloat16" : "float16");
    if (!c) return -1;
    if (p->llama3_rope)
        json_object_set_new(c, "rope_scaling", json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor", 8.0,
                                                         "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                                                         "original_max_position_embeddings", 8192));
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (write_json(path, c)) return -1;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    return write_json(path, json_pack("{s:i, s:[i,i], s:b}", "bos_token_id", sp->bos, "eos_token_id", sp->eos[0],
                                      sp->eos[sp->n_eos - 1], "do_sample", 0));
}

/* Writes the tensors in shards of at most shard_bytes, and the index. */
static int write_weights(const char *dir, const tensor_spec *specs, int n, mm_dtype dt, size_t shard_bytes, uint64_t seed) {
    size_t es = mm_dtype_size(dt);
    int n_shards = 0;
    int shard_of[n];
    size_t acc = 0;
    for (int i = 0; i < n; i++) {
        size_t b = (size_t)spec_numel(&specs[i]) * es;
        if (i == 0 || (acc + b > shard_bytes && acc > 0)) n_shards++, acc = 0;
        acc += b;
        shard_of[i] = n_shards - 1;
    }
    json_t *weight_map = json_object();
    uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
    for (int s = 0, first = 0; s < n_shards; s++) {
        int last = first;
        while (last < n && shard_of[last] == s) last++;
        char file[256], path[4096];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        mm_st_write_tensor *w = calloc((size_t)(last - first), sizeof *w);
        int ok = w != NULL;
        for (int i = first; ok && i < last; i++) {
            mm_st_write_tensor *t = &w[i - first];
            t->name = specs[i].name, t->dtype = dt, t->ndim = specs[i].ndim;
            t->shape[0] = specs[i].shape[0], t->shape[1] = specs[i].shape[1];
            void *data = malloc((size_t)spec_numel(&specs[i]) * es);
            if (!data) { ok = 0; break; }
            fill(data, dt, spec_numel(&specs[i]), specs[i].is_norm, &rng);
            t->data = data;
            json_object_set_new(weight_map, specs[i].name, json_string(file));
        }
        mm_status st = ok ? mm_safetensors_write(path, w, (size_t)(last - first)) : MM_ERR_NOMEM;
        for (int i = 0; w && i < last - first; i++) free((void *)w[i].data);
        free(w);
        if (st != MM_OK) {
            fprintf(stderr, "mm-mkmodel: %s: %s\n", path, ok ? mm_error_last() : "out of memory");
            json_decref(weight_map);
            return -1;
        }
        fprintf(stderr, "\rmm-mkmodel: wrote shard %d/%d", s + 1, n_shards);
        first = last;
    }
    fprintf(stderr, "\n");
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    return write_json(path, json_pack("{s:{}, s:o}", "metadata", "weight_map", weight_map));
}

/* Removes the files of dir (flat) and dir itself. */
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') snprintf(path, sizeof path, "%s/%s", dir, e->d_name), unlink(path);
    if (d) closedir(d);
    rmdir(dir);
}

static void usage(FILE *f) {
    fprintf(f, "usage: mm-mkmodel --out DIR [--preset tiny|110m|llama3-8b|siglip-so400m] [--dtype f32|bf16|f16|q8]\n"
               "                  [--layers N] [--vocab N] [--seed S] [--shard-mb MB] [--tokenizer FILE]\n"
               "  --tokenizer FILE  tokenizer.json to ship (default: the embedded tiny model's, %s);\n"
               "                    config.json takes its <|begin_of_text|> / <|end_of_text|>, <|eot_id|> ids\n"
               "  --dtype q8        the f32 model of the same seed, converted as mm-quantize does (linear\n"
               "                    weights and lm_head int8 with f16 scales per 32; written via DIR.f32-tmp)\n",
            MM_DEFAULT_TOKENIZER);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},    {"preset", required_argument, 0, 'p'},
                                         {"dtype", required_argument, 0, 'd'},  {"layers", required_argument, 0, 'l'},
                                         {"vocab", required_argument, 0, 'v'},  {"seed", required_argument, 0, 's'},
                                         {"shard-mb", required_argument, 0, 'S'}, {"tokenizer", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *out = NULL, *preset_name = "tiny", *dtype = "bf16", *tokenizer = MM_DEFAULT_TOKENIZER;
    int layers = 0, vocab = 0, c;
    unsigned long long seed = 0;
    long shard_mb = 2048;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'p': preset_name = optarg; break;
        case 'd': dtype = optarg; break;
        case 'l': layers = atoi(optarg); break;
        case 'v': vocab = atoi(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'S': shard_mb = atol(optarg); break;
        case 't': tokenizer = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!strcmp(preset_name, "siglip-so400m") && out) { /* vision tower: tools/mkmodel_siglip.c */
        mm_dtype sdt = !strcmp(dtype, "f32") ? MM_DTYPE_F32 : !strcmp(dtype, "f16") ? MM_DTYPE_F16 : MM_DTYPE_BF16;
        if ((mkdir(out, 0755) != 0 && errno != EEXIST) || mkmodel_siglip_write(out, sdt, layers, seed)) return 1;
        fprintf(stderr, "mm-mkmodel: siglip-so400m (%s) written to %s\n", dtype, out);
        return 0;
    }
    const preset *p = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (!strcmp(presets[i].name, preset_name)) p = &presets[i];
    int q8 = !strcmp(dtype, "q8");
    mm_dtype dt = !strcmp(dtype, "f32") || q8 ? MM_DTYPE_F32 : !strcmp(dtype, "bf16") ? MM_DTYPE_BF16
                : !strcmp(dtype, "f16") ? MM_DTYPE_F16 : MM_DTYPE_COUNT;
    if (!out || !p || dt == MM_DTYPE_COUNT || layers < 0 || vocab < 0 || shard_mb <= 0) {
        usage(stderr);
        return 2;
    }
    preset chosen = *p;
    if (layers) chosen.layers = layers;
    char tmp[2048]; /* short enough that every path built from it fits its 4096-byte buffer */
    const char *final_out = out;
    if (q8) { /* the f32 model first, then the converter (one code path for every q8 checkpoint) */
        snprintf(tmp, sizeof tmp, "%s.f32-tmp", out);
        out = tmp;
    }
    if (vocab) chosen.vocab = vocab;
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "mm-mkmodel: mkdir %s: %s\n", out, strerror(errno));
        return 1;
    }
    special_ids sp;
    mm_tokenizer *probe;
    if (!vocab && mm_tokenizer_load(tokenizer, &probe) == MM_OK) { /* the preset's vocabulary, grown to hold it */
        int32_t n = mm_tokenizer_n_vocab(probe);
        mm_tokenizer_free(probe);
        if (n > chosen.vocab) {
            fprintf(stderr, "mm-mkmodel: vocabulary %d -> %d to hold %s\n", chosen.vocab, n, tokenizer);
            chosen.vocab = n;
        }
    }
    if (tokenizer_ids(tokenizer, chosen.vocab, &sp)) return 1;
    int n_specs = 2 + 9 * chosen.layers + 1;
    tensor_spec *specs = calloc((size_t)n_specs, sizeof *specs);
    if (!specs) return 1;
    n_specs = spec_list(&chosen, specs);
    int rc = write_configs(out, &chosen, dt, &sp) || write_weights(out, specs, n_specs, dt, (size_t)shard_mb << 20, seed);
    if (!rc) { /* the service and mm-run need one: a checkpoint without it cannot be served */
        char dst[4096];
        snprintf(dst, sizeof dst, "%s/tokenizer.json", out);
        rc = tool_copy_file(tokenizer, dst);
    }
    free(specs);
    if (q8) {
        if (!rc) rc = q8_convert_dir(out, final_out, 1, (size_t)shard_mb << 20);
        remove_dir(out);
        out = final_out;
    }
    if (!rc) fprintf(stderr, "mm-mkmodel: %s (%s, %s) written to %s\n", chosen.name, dtype, preset_name, out);
    return rc ? 1 : 0;
}
