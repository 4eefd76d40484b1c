/* q8 writers' shared parts (see q8_convert.h). */
#include "q8_convert.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/q8.h"
#include "common/safetensors.h"

int q8_is_linear(const char *name, int lm_head) {
    if (lm_head && !strcmp(name, "lm_head.weight")) return 1;
    static const char *const tails[] = {".self_attn.q_proj.weight", ".self_attn.k_proj.weight",
                                        ".self_attn.v_proj.weight", ".self_attn.o_proj.weight",
                                        ".mlp.gate_proj.weight",    ".mlp.up_proj.weight",
                                        ".mlp.down_proj.weight"};
    if (strncmp(name, "model.layers.", 13)) return 0;
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof tails / sizeof *tails; i++) {
        size_t t = strlen(tails[i]);
        if (n > t && !strcmp(name + n - t, tails[i])) return 1;
    }
    return 0;
}

static float elem(mm_dtype dt, const void *w, int64_t i) {
    if (dt == MM_DTYPE_F32) return ((const float *)w)[i];
    if (dt == MM_DTYPE_BF16) return mm_bf16_to_f32(((const uint16_t *)w)[i]);
    return mm_f16_to_f32(((const uint16_t *)w)[i]);
}

mm_status q8_quantize_tensor(const char *name, mm_dtype dt, const void *w, int64_t N, int64_t K, int8_t **q,
                             uint16_t **d) {
    if (!mm_dtype_is_float(dt))
        return MM_ERROR(MM_ERR_FORMAT, "tensor '%s' is %s, expected F32, BF16 or F16", name, mm_dtype_name(dt));
    if (K % MM_Q8_BLOCK)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "tensor '%s': K = %lld is not a multiple of %d", name, (long long)K,
                        MM_Q8_BLOCK);
    *q = malloc((size_t)(N * K));
    *d = malloc((size_t)(N * (K / MM_Q8_BLOCK)) * sizeof **d);
    float *row = malloc((size_t)K * sizeof *row);
    mm_status s = MM_OK;
    if (!*q || !*d || !row) s = MM_ERROR(MM_ERR_NOMEM, "tensor '%s' as q8", name);
    for (int64_t n = 0; s == MM_OK && n < N; n++) {
        for (int64_t k = 0; k < K; k++) row[k] = elem(dt, w, n * K + k);
        if (mm_q8_quantize_row(row, K, *q + n * K, *d + n * (K / MM_Q8_BLOCK)))
            s = MM_ERROR(MM_ERR_UNSUPPORTED, "tensor '%s' row %lld: a block's scale overflows f16", name, (long long)n);
    }
    free(row);
    if (s != MM_OK) free(*q), free(*d), *q = NULL, *d = NULL;
    return s;
}

int q8_config_set(json_t *config) {
    return json_object_set_new(config, "quantization_config",
                               json_pack("{s:s, s:i, s:i, s:s}", "quant_method", MM_Q8_METHOD, "bits", 8, "block_size",
                                         MM_Q8_BLOCK, "scale_dtype", "float16"));
}

int tool_copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb"), *out = in ? fopen(dst, "wb") : NULL;
    char buf[1 << 16];
    size_t n;
    int rc = in && out ? 0 : -1;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = -1;
    if (in) fclose(in);
    if (out && fclose(out)) rc = -1;
    if (rc) fprintf(stderr, "cannot copy %s to %s: %s\n", src, dst, strerror(errno));
    return rc;
}

/* One output tensor: borrowed from the mapping (owned == 0) or quantized here. */
typedef struct {
    mm_st_write_tensor t;
    int owned;
    size_t bytes;
} out_tensor;

/* Appends the output tensors of source tensor src under name (2 when quantized). */
static mm_status emit(const mm_st_tensor *src, const char *name, int quantize, out_tensor *out, int *n) {
    if (!quantize) {
        out_tensor *o = &out[(*n)++];
        o->t = (mm_st_write_tensor){.name = strdup(name), .dtype = src->dtype, .ndim = src->ndim, .data = src->data};
        for (int i = 0; i < src->ndim; i++) o->t.shape[i] = src->shape[i];
        o->bytes = src->nbytes;
        return o->t.name ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "name");
    }
    if (src->ndim != 2) return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' has %d dims, expected 2", src->file, name, src->ndim);
    int64_t N = src->shape[0], K = src->shape[1];
    int8_t *q;
    uint16_t *d;
    CHECK(q8_quantize_tensor(name, src->dtype, src->data, N, K, &q, &d));
    char scale[300];
    snprintf(scale, sizeof scale, "%s" MM_Q8_SCALE_SUFFIX, name);
    out[*n] = (out_tensor){{strdup(name), MM_DTYPE_I8, 2, {N, K}, q}, 1, (size_t)(N * K)};
    out[*n + 1] = (out_tensor){{strdup(scale), MM_DTYPE_F16, 2, {N, K / MM_Q8_BLOCK}, d}, 1, (size_t)(N * K / MM_Q8_BLOCK * 2)};
    *n += 2;
    return out[*n - 2].t.name && out[*n - 1].t.name ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "name");
}

static void release(out_tensor *o, int n) {
    for (int i = 0; i < n; i++) {
        free((void *)o[i].t.name);
        if (o[i].owned) free((void *)o[i].t.data);
    }
}

/* Copies the files of src that are not weights or config.json into dst. */
static int copy_side_files(const char *src, const char *dst) {
    DIR *d = opendir(src);
    if (!d) return fprintf(stderr, "mm-quantize: cannot open %s: %s\n", src, strerror(errno)), -1;
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (n[0] == '.' || !strcmp(n, "config.json") || !strcmp(n, "model.safetensors.index.json") ||
            (len > 12 && !strcmp(n + len - 12, ".safetensors")))
            continue;
        char a[4096], b[4096];
        struct stat st;
        snprintf(a, sizeof a, "%s/%s", src, n), snprintf(b, sizeof b, "%s/%s", dst, n);
        if (stat(a, &st) == 0 && S_ISREG(st.st_mode)) rc = tool_copy_file(a, b);
    }
    closedir(d);
    return rc;
}

int q8_convert_dir(const char *src, const char *dst, int lm_head, size_t shard_bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", src);
    json_error_t jerr;
    json_t *config = json_load_file(path, 0, &jerr);
    if (!config) return fprintf(stderr, "mm-quantize: %s: %s\n", path, jerr.text), -1;
    if (json_object_get(config, "quantization_config")) {
        fprintf(stderr, "mm-quantize: %s is already quantized\n", path);
        json_decref(config);
        return -1;
    }
    int tied = json_is_true(json_object_get(config, "tie_word_embeddings"));
    mm_safetensors *st = NULL;
    if (mm_safetensors_open(src, &st) != MM_OK) {
        fprintf(stderr, "mm-quantize: %s\n", mm_error_last());
        json_decref(config);
        return -1;
    }
    if (mkdir(dst, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "mm-quantize: mkdir %s: %s\n", dst, strerror(errno));
        mm_safetensors_close(st), json_decref(config);
        return -1;
    }
    size_t n_src = mm_safetensors_count(st);
    out_tensor *shard = calloc(2 * n_src + 2, sizeof *shard);
    json_t *weight_map = json_object();
    int n = 0, n_shards = 0, rc = shard ? 0 : -1;
    size_t acc = 0;
    /* each source tensor in index order, then the untied lm_head; a shard is written
     * when the next tensor would overflow it, so at most one shard is in memory */
    for (size_t i = 0; !rc && i <= n_src + 1; i++) {
        const char *name = i < n_src ? mm_safetensors_name(st, i)
                           : i == n_src && tied && lm_head ? "lm_head.weight" : NULL;
        const mm_st_tensor *t = NULL;
        if (name) {
            const char *from = i < n_src ? name : "model.embed_tokens.weight";
            if (mm_safetensors_get(st, from, -1, NULL, &t) != MM_OK) {
                fprintf(stderr, "mm-quantize: %s\n", mm_error_last());
                rc = -1;
                break;
            }
        }
        size_t next = t ? t->nbytes : 0;
        if (n && (!name || acc + next > shard_bytes)) {
            char file[64];
            snprintf(file, sizeof file, "model-%05d.safetensors", ++n_shards);
            snprintf(path, sizeof path, "%s/%s", dst, file);
            mm_st_write_tensor *w = malloc((size_t)n * sizeof *w);
            for (int j = 0; w && j < n; j++) w[j] = shard[j].t, json_object_set_new(weight_map, shard[j].t.name, json_string(file));
            if (!w || mm_safetensors_write(path, w, (size_t)n) != MM_OK) {
                fprintf(stderr, "mm-quantize: %s: %s\n", path, w ? mm_error_last() : "out of memory");
                rc = -1;
            }
            free(w);
            release(shard, n);
            n = 0, acc = 0;
            fprintf(stderr, "\rmm-quantize: wrote shard %d", n_shards);
        }
        if (!name || rc) continue;
        int quantize = q8_is_linear(name, lm_head);
        if (quantize && (t->ndim != 2 || t->shape[1] % MM_Q8_BLOCK)) { /* e.g. the tiny preset's 172-wide MLP */
            fprintf(stderr, "mm-quantize: %s stays %s (its input width is not a multiple of %d)\n", name,
                    mm_dtype_name(t->dtype), MM_Q8_BLOCK);
            quantize = 0;
        }
        if (emit(t, name, quantize, shard, &n) != MM_OK) {
            fprintf(stderr, "mm-quantize: %s\n", mm_error_last());
            rc = -1;
        }
        acc += next;
    }
    fprintf(stderr, "\n");
    release(shard, n);
    free(shard);
    mm_safetensors_close(st);
    if (!rc) {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dst);
        rc = json_dump_file(json_pack("{s:{}, s:O}", "metadata", "weight_map", weight_map), path, JSON_INDENT(2)) ? -1 : 0;
    }
    json_decref(weight_map);
    if (!rc && tied && lm_head) json_object_set_new(config, "tie_word_embeddings", json_false());
    if (!rc) {
        q8_config_set(config);
        snprintf(path, sizeof path, "%s/config.json", dst);
        rc = json_dump_file(config, path, JSON_INDENT(2) | JSON_SORT_KEYS) ? -1 : 0;
        if (rc) fprintf(stderr, "mm-quantize: cannot write %s\n", path);
    }
    json_decref(config);
    return rc ? rc : copy_side_files(src, dst);
}
