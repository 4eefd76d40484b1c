/* Malformed decoder directories and visual-token files must give an error status with
 * a message naming the file and what is wrong, never a crash (also run under ASan).
 * Each case copies assets/tiny/decoder to a temporary directory and breaks one thing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/safetensors.h"
#include "model/decoder.h"
#include "tests/testutil.h"

static char tmp[256];
static mm_backend *be;

static int sh(const char *fmt, const char *a, const char *b) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    return system(cmd);
}

static void fresh_copy(void) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/dec' && cp -r '%s' '%s/dec'", tmp, mm_asset_path("tiny/decoder"), tmp);
    EXPECT(system(cmd) == 0, "copy the tiny decoder");
}

/* Replaces the first occurrence of `from` by `to` in dir/rel. */
static void edit(const char *rel, const char *from, const char *to) {
    char path[512];
    snprintf(path, sizeof path, "%s/dec/%s", tmp, rel);
    FILE *f = fopen(path, "rb");
    EXPECT(f != NULL, "open %s", path);
    if (!f) return;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *at = strstr(buf, from);
    EXPECT(at != NULL, "'%s' in %s", from, path);
    if (!at) return;
    f = fopen(path, "wb");
    fwrite(buf, 1, (size_t)(at - buf), f);
    fputs(to, f);
    fputs(at + strlen(from), f);
    fclose(f);
}

static void expect_load_error(const char *what, const char *needle) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/dec", tmp);
    mm_decoder *d = NULL;
    mm_status s = mm_decoder_load(dir, be, &d);
    EXPECT(s != MM_OK && d == NULL, "%s: loaded anyway", what);
    EXPECT(strstr(mm_error_last(), needle) != NULL, "%s: message '%s' lacks '%s'", what, mm_error_last(), needle);
    mm_decoder_free(d);
}

static void test_dirs(void) {
    char path[512];
    fresh_copy();
    snprintf(path, sizeof path, "%s/dec", tmp);
    mm_decoder *d = NULL;
    EXPECT(mm_decoder_load(path, be, &d) == MM_OK, "intact copy: %s", mm_error_last());
    mm_decoder_free(d);

    sh("rm -rf '%s/dec/unet'%s", tmp, "");
    expect_load_error("missing unet/", "unet/config.json");

    fresh_copy();
    edit("unet/config.json", "\"CrossAttnDownBlock2D\"", "\"SimpleCrossAttnDownBlock2D\"");
    expect_load_error("unknown down block", "down_block_types[0]");
    fresh_copy();
    edit("unet/config.json", "\"class_embed_type\": null", "\"class_embed_type\": \"timestep\"");
    expect_load_error("class embedding", "class_embed_type");
    fresh_copy();
    edit("unet/config.json", "\"norm_num_groups\": 8", "\"norm_num_groups\": 7");
    expect_load_error("groups", "norm_num_groups");
    fresh_copy();
    edit("unet/config.json", "\"cross_attention_dim\": 32", "\"cross_attention_dim\": 24");
    expect_load_error("cross_attention_dim vs weights", "attn2.to_k.weight");
    fresh_copy();
    edit("unet/config.json", "{", "[");
    expect_load_error("broken JSON", "config.json");

    fresh_copy();
    sh("truncate -s 5000 '%s/dec/unet/diffusion_pytorch_model.safetensors'%s", tmp, "");
    expect_load_error("truncated UNet weights", "diffusion_pytorch_model.safetensors");
    fresh_copy();
    sh("rm '%s/dec/vae/diffusion_pytorch_model.safetensors'%s", tmp, "");
    expect_load_error("no VAE weights", "vae: no diffusion_pytorch_model");
    fresh_copy();
    /* a weights file with one tensor only: the first lookup names the missing tensor */
    float one = 1.0f;
    mm_st_write_tensor t = {.name = "conv_in.bias", .dtype = MM_DTYPE_F32, .ndim = 1, .shape = {1}, .data = &one};
    snprintf(path, sizeof path, "%s/dec/unet/diffusion_pytorch_model.safetensors", tmp);
    EXPECT(mm_safetensors_write(path, &t, 1) == MM_OK, "write: %s", mm_error_last());
    expect_load_error("missing tensor", "time_embedding.linear_1.weight");

    fresh_copy();
    edit("adapter/config.json", "\"mlp\"", "\"xattn\"");
    expect_load_error("adapter xattn mode", "adapter mode 'xattn'");
    fresh_copy();
    edit("adapter/config.json", "\"output_dim\": 32", "\"output_dim\": 16");
    expect_load_error("adapter output_dim", "layers.2.weight");
    fresh_copy();
    edit("scheduler/scheduler_config.json", "\"scaled_linear\"", "\"squaredcos_cap_v2\"");
    expect_load_error("beta schedule", "beta_schedule 'squaredcos_cap_v2'");
    fresh_copy();
    edit("scheduler/scheduler_config.json", "\"skip_prk_steps\": true", "\"skip_prk_steps\": false");
    expect_load_error("PRK steps", "skip_prk_steps");
    fresh_copy();
    edit("vae/config.json", "\"scaling_factor\": 0.18215", "\"scaling_factor\": -1");
    expect_load_error("VAE scaling", "scaling_factor");
    /* sizes beyond 32 bits are refused with the value, never read as their low bits */
    static const char *const wide[][4] = {
        {"unet/config.json", "\"in_channels\": 4", "\"in_channels\": 4294967300", "'in_channels' = 4294967300"},
        {"unet/config.json", "\"attention_head_dim\": 4", "\"attention_head_dim\": 4294967300", "4294967300"},
        {"unet/config.json", "\"norm_num_groups\": 8", "\"norm_num_groups\": 4294967304", "'norm_num_groups' = 4294967304"},
        {"vae/config.json", "\"latent_channels\": 4", "\"latent_channels\": 4294967300", "'latent_channels' = 4294967300"},
        {"adapter/config.json", "\"output_dim\": 32", "\"output_dim\": 4294967328", "'output_dim' = 4294967328"},
        {"scheduler/scheduler_config.json", "\"num_train_timesteps\": 1000", "\"num_train_timesteps\": 4294968296",
         "'num_train_timesteps' = 4294968296"},
        {"scheduler/scheduler_config.json", "\"beta_end\": 0.012", "\"beta_end\": \"0.012\"", "'beta_end' = \"0.012\""},
        {"unet/config.json", "\"in_channels\": 4", "\"in_channels\": 4.0", "'in_channels' = 4.0 must be an integer"},
    };
    for (size_t i = 0; i < sizeof wide / sizeof *wide; i++) {
        fresh_copy();
        edit(wide[i][0], wide[i][1], wide[i][2]);
        expect_load_error(wide[i][2], wide[i][3]);
        EXPECT(strstr(mm_error_last(), wide[i][0]) != NULL, "%s: file not named: %s", wide[i][2], mm_error_last());
    }
}

static void write_tokens(const char *name, mm_dtype dt, int ndim, const int64_t *shape, const void *data) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    mm_st_write_tensor t = {.name = "tokens", .dtype = dt, .ndim = ndim, .data = data};
    for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
    EXPECT(mm_safetensors_write(path, &t, 1) == MM_OK, "write %s: %s", path, mm_error_last());
}

static void expect_tokens(const char *name, int ok, const char *needle) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    float *tok = NULL;
    int64_t n = 0;
    mm_status s = mm_decoder_read_tokens(path, 48, &tok, &n);
    if (ok) {
        EXPECT(s == MM_OK && n == 64 && tok, "%s: %s", name, mm_error_last());
    } else {
        EXPECT(s != MM_OK && !tok, "%s accepted", name);
        EXPECT(strstr(mm_error_last(), needle) != NULL, "%s: message '%s' lacks '%s'", name, mm_error_last(), needle);
    }
    free(tok);
}

static void test_tokens(void) {
    static float f[80 * 48];
    for (int i = 0; i < 80 * 48; i++) f[i] = (float)(i % 7) * 0.1f;
    int32_t ints[64 * 48] = {0};
    write_tokens("good.safetensors", MM_DTYPE_F32, 2, (int64_t[]){64, 48}, f);
    expect_tokens("good.safetensors", 1, NULL);
    write_tokens("good3.safetensors", MM_DTYPE_F32, 3, (int64_t[]){1, 64, 48}, f);
    expect_tokens("good3.safetensors", 1, NULL);
    write_tokens("dim.safetensors", MM_DTYPE_F32, 2, (int64_t[]){64, 47}, f);
    expect_tokens("dim.safetensors", 0, "must be [n, 48]");
    write_tokens("many.safetensors", MM_DTYPE_F32, 2, (int64_t[]){78, 48}, f);
    expect_tokens("many.safetensors", 0, "1 <= n <= 77");
    write_tokens("batch.safetensors", MM_DTYPE_F32, 3, (int64_t[]){2, 32, 48}, f);
    expect_tokens("batch.safetensors", 0, "[1, n, 48]");
    write_tokens("int.safetensors", MM_DTYPE_I32, 2, (int64_t[]){64, 48}, ints);
    expect_tokens("int.safetensors", 0, "dtype I32");
    f[5 * 48 + 3] = NAN;
    write_tokens("nan.safetensors", MM_DTYPE_F32, 2, (int64_t[]){64, 48}, f);
    expect_tokens("nan.safetensors", 0, "token 5 has a non-finite value");
    expect_tokens("absent.safetensors", 0, "absent.safetensors");
    char path[512];
    snprintf(path, sizeof path, "%s/junk.safetensors", tmp);
    FILE *j = fopen(path, "wb");
    fputs("this is not a safetensors file at all", j);
    fclose(j);
    expect_tokens("junk.safetensors", 0, "junk.safetensors");
}

/* Step counts the scheduler cannot make are refused, naming why: with steps_offset 1
 * and "leading" spacing, 1000 steps over 1000 training timesteps reach timestep 1000
 * (diffusers fails there too, indexing alphas_cumprod); 999 steps are fine. */
static void test_steps(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", mm_asset_path("tiny/decoder/scheduler"));
    static const struct {
        mm_diffusion_sampler_kind kind;
        int steps;
        const char *needle;
    } cases[] = {{MM_DIFFUSION_SAMPLER_PNDM, 1000, "reach timestep 1000"},
                 {MM_DIFFUSION_SAMPLER_DDIM, 1000, "reach timestep 1000"},
                 {MM_DIFFUSION_SAMPLER_DDIM, 1001, "1001 steps (1..1000)"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mm_diffusion_sched *sc = NULL;
        mm_status s = mm_diffusion_sched_create(dir, cases[i].kind, cases[i].steps, 16, &sc);
        EXPECT(s == MM_ERR_INVALID && strstr(mm_error_last(), cases[i].needle), "%d steps: %s", cases[i].steps,
               mm_error_last());
        mm_diffusion_sched_free(sc);
    }
    mm_diffusion_sched *sc = NULL;
    EXPECT(mm_diffusion_sched_create(dir, MM_DIFFUSION_SAMPLER_PNDM, 999, 16, &sc) == MM_OK, "pndm 999: %s", mm_error_last());
    mm_diffusion_sched_free(sc);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/mm_decoder_malformed.XXXXXX");
    if (!mkdtemp(tmp) || mm_backend_cpu_ref_init(&be) != MM_OK) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    test_dirs();
    test_tokens();
    test_steps();
    mm_backend_free(be);
    sh("rm -rf '%s'%s", tmp, "");
    return mm_test_finish("test_decoder_malformed");
}
