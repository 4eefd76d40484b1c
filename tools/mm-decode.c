/* mm-decode: turns 64 visual tokens (a safetensors file) into a PNG with the diffusion
 * decoder, in one process: the decoder pool's work without the pool.
 *
 *   mm-decode --model DIR --tokens FILE.safetensors [--steps 50] [--guidance 7.5]
 *             [--sampler pndm|ddim|dpmpp2m] [--seed 0] [--size PIXELS] [--threads N]
 *             [--backend cpu|cpu-ref] --out image.png
 *
 * --size defaults to the UNet's sample_size x 8 (512 for SD 1.5, 64 for the tiny model).
 * DIR is a model root (metamorph.json naming its decoder/) or a decoder/ directory.
 * Progress goes to stderr; wiring only, the maths is in model/decoder.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/runtime.h"
#include "common/png_encode.h"
#include "model/decoder.h"
#include "model/manifest.h"

static void usage(FILE *f) {
    fprintf(f, "usage: mm-decode --model DIR --tokens FILE.safetensors [--steps N] [--guidance G]\n"
               "                 [--sampler pndm|ddim|dpmpp2m] [--seed S] [--size PIXELS] [--threads N]\n"
               "                 [--backend cpu|cpu-ref] --out IMAGE.png\n");
}

typedef struct {
    double t0;
    int tty;
} progress_state;

/* Draws the bar; never stops the sampling (0). */
static int progress(void *user, int i, int n) {
    progress_state *p = user;
    double el = mm_now_s() - p->t0;
    int width = 30, fill = n ? i * width / n : width;
    char bar[64];
    for (int k = 0; k < width; k++) bar[k] = k < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "%sdenoising [%s] %d/%d  %.1f s, %.2f s/step%s", p->tty ? "\r" : "", bar, i, n, el, el / i,
            p->tty && i < n ? "" : "\n");
    fflush(stderr);
    return 0;
}

int main(int argc, char **argv) {
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    const char *model = NULL, *tokens_path = NULL, *out = NULL, *backend = "cpu";
    int threads = 0;
    mm_decode_params p;
    mm_decode_params_default(&p);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "mm-decode: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        char *end = NULL;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--tokens")) tokens_path = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--backend")) backend = v;
        else if (!strcmp(a, "--steps")) p.image.steps = (int32_t)strtol(v, &end, 10);
        else if (!strcmp(a, "--guidance")) p.image.guidance = strtof(v, &end);
        else if (!strcmp(a, "--seed")) p.image.seed = strtoull(v, &end, 10);
        else if (!strcmp(a, "--size")) p.height = p.width = (int32_t)strtol(v, &end, 10);
        else if (!strcmp(a, "--threads")) threads = (int)strtol(v, &end, 10);
        else if (!strcmp(a, "--sampler")) {
            if (mm_diffusion_sampler_parse(v, &p.image.sampler) != 0) {
                fprintf(stderr, "mm-decode: unknown sampler '%s' (pndm, ddim, dpmpp2m)\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "mm-decode: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "mm-decode: %s: '%s' is not a number\n", a, v);
            return 2;
        }
        i++;
    }
    if (!model || !tokens_path || !out) {
        usage(stderr);
        return 2;
    }
    char dir[4096];
    mm_backend *be = NULL;
    mm_decoder *d = NULL;
    float *tokens = NULL;
    uint8_t *rgb = NULL;
    int64_t n = 0;
    int rc = 1;
    if (mm_model_part_dir(model, "decoder", dir, sizeof dir) != MM_OK || mm_backend_init(backend, threads, &be) != MM_OK ||
        mm_decoder_load(dir, be, &d) != MM_OK ||
        mm_decoder_read_tokens(tokens_path, d->adapter->cfg.input_dim, &tokens, &n) != MM_OK) {
        fprintf(stderr, "mm-decode: %s\n", mm_error_last());
        goto done;
    }
    int32_t H, W;
    mm_decoder_image_size(d, &p, &H, &W);
    if (H <= 0 || W <= 0 || H > 8192 || W > 8192) {
        fprintf(stderr, "mm-decode: bad --size %d (1..8192)\n", H);
        goto done;
    }
    rgb = malloc((size_t)H * (size_t)W * 3);
    if (!rgb) {
        fprintf(stderr, "mm-decode: out of memory for a %dx%d image\n", W, H);
        goto done;
    }
    progress_state ps = {.t0 = mm_now_s(), .tty = isatty(2)};
    p.progress = progress, p.user = &ps;
    fprintf(stderr, "mm-decode: %lld tokens, %s, %d steps, guidance %.2f, %dx%d, backend %s\n", (long long)n,
            mm_diffusion_sampler_name(p.image.sampler), p.image.steps, p.image.guidance, W, H, be->ops->name);
    if (mm_decoder_generate(d, tokens, n, &p, rgb, NULL) != MM_OK || mm_png_write_file(out, rgb, W, H) != MM_OK) {
        fprintf(stderr, "mm-decode: %s\n", mm_error_last());
        goto done;
    }
    fprintf(stderr, "mm-decode: wrote %s in %.1f s\n", out, mm_now_s() - ps.t0);
    rc = 0;
done:
    free(tokens), free(rgb);
    mm_decoder_free(d);
    mm_backend_free(be);
    return rc;
}
