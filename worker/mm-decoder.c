/* mm-decoder: a worker of the decoder pool (DESIGN section 2). Loads the diffusion
 * decoder once, joins the coordinator's "decode" ROUTER and turns visual tokens into PNGs:
 *
 *   mm-decoder --model DIR --connect ENDPOINT [shared flags]
 *
 * JOB header: n_tokens, dim, steps, guidance (0: the default), sampler ("": the default),
 * seed (model/image_params.h holds the defaults and limits); payload f32 [n_tokens, dim].
 * RESULT payload: the PNG at the model's default size, byte for byte what `mm-decode`
 * writes for the same tokens and parameters (same mm_decoder_generate, same
 * mm_png_encode). DIR is a model root (metamorph.json naming its decoder/) or a decoder
 * directory. A CANCEL stops the job between two UNet steps. Wiring only. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/png_encode.h"
#include "common/runtime.h"
#include "model/decoder.h"
#include "model/manifest.h"
#include "pool_worker.h"

static void usage(FILE *f) {
    fprintf(f, "usage: mm-decoder --model DIR --connect ENDPOINT [options]\n"
               "Decoder pool worker: visual tokens -> adapter -> UNet with guidance -> VAE -> PNG bytes.\n");
}

/* The job's parameters over the model's defaults; bad values are the sender's fault. */
static mm_status job_params(const mm_decoder *d, const Metamorph__Internal__PoolHeader *job, size_t len,
                            mm_decode_params *p) {
    const int32_t D = d->adapter->cfg.input_dim;
    if (job->n_tokens < 1 || job->n_tokens > MM_ADAPTER_CONTEXT_TOKENS)
        return MM_ERROR(MM_ERR_INVALID, "n_tokens %d outside 1..%d", job->n_tokens, MM_ADAPTER_CONTEXT_TOKENS);
    if (job->dim != D) return MM_ERROR(MM_ERR_INVALID, "visual tokens of width %d, this decoder takes %d", job->dim, D);
    if (len != (size_t)job->n_tokens * (size_t)D * sizeof(float))
        return MM_ERROR(MM_ERR_INVALID, "payload of %zu bytes, f32 [%d, %d] needs %zu", len, job->n_tokens, D,
                        (size_t)job->n_tokens * (size_t)D * sizeof(float));
    if (job->steps <= 0 || job->steps > MM_DECODE_MAX_STEPS)
        return MM_ERROR(MM_ERR_INVALID, "steps %d outside 1..%d", job->steps, MM_DECODE_MAX_STEPS);
    if (!isfinite(job->guidance)) return MM_ERROR(MM_ERR_INVALID, "guidance is not a finite number");
    mm_decode_params_default(p);
    p->image.steps = job->steps;
    if (job->guidance != 0.0f) p->image.guidance = job->guidance;
    if (job->sampler[0] && mm_diffusion_sampler_parse(job->sampler, &p->image.sampler) != 0)
        return MM_ERROR(MM_ERR_INVALID, "unknown sampler '%.32s' (pndm, ddim, dpmpp2m)", job->sampler);
    p->image.seed = job->seed;
    return MM_OK;
}

/* Between UNet steps: non-zero (stop) once the coordinator cancelled the job. */
static int stop_if_cancelled(void *ctx, int i, int n) {
    (void)i, (void)n;
    return mm_pool_job_cancelled(ctx);
}

static mm_status decode_job(void *user, const mm_pool_job_ctx *ctx, const Metamorph__Internal__PoolHeader *job,
                            const uint8_t *payload, size_t len, mm_pool_output *out) {
    mm_decoder *d = user;
    mm_decode_params p;
    CHECK(job_params(d, job, len, &p));
    p.progress = stop_if_cancelled, p.user = (void *)ctx; /* MM_ERR_CANCELLED "cancelled after step i of n" */
    int32_t H, W;
    mm_decoder_image_size(d, &p, &H, &W);
    float *tokens = malloc(len);                          /* [n_tokens, dim]: aligned copy of the frame */
    uint8_t *rgb = malloc((size_t)H * (size_t)W * 3);     /* [H, W, 3] */
    mm_status s = MM_OK;
    if (!tokens || !rgb) {
        s = MM_ERROR(MM_ERR_NOMEM, "decoder job buffers (%dx%d image)", W, H);
        goto done;
    }
    memcpy(tokens, payload, len);
    CHECK_GOTO(mm_decoder_generate(d, tokens, job->n_tokens, &p, rgb, NULL), s, done);
    CHECK_GOTO(mm_png_encode(rgb, W, H, &out->payload, &out->len), s, done);
    out->width = W, out->height = H;
done:
    free(tokens), free(rgb);
    return s;
}

int main(int argc, char **argv) {
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    mm_pool_worker_config c;
    int pr = mm_pool_worker_parse(argc, argv, "mm-decoder", "decode", usage, NULL, NULL, &c);
    if (pr != 0) return pr > 0 ? 0 : 2;
    char dir[4096];
    mm_backend *be = NULL;
    mm_decoder *d = NULL;
    int rc = MM_EXIT_CONFIG; /* loading fails only for the model files or the backend asked for */
    if (mm_model_part_dir(c.model, "decoder", dir, sizeof dir) != MM_OK ||
        mm_backend_init(c.backend, c.threads, &be) != MM_OK || mm_decoder_load(dir, be, &d) != MM_OK) {
        LOG_ERROR("mm-decoder: %s", mm_error_last());
        goto done;
    }
    rc = 1;
    int32_t H, W;
    mm_decode_params def;
    mm_decode_params_default(&def);
    mm_decoder_image_size(d, &def, &H, &W);
    LOG_INFO("mm-decoder: %s on %s, tokens [<=%d, %d] -> %dx%d PNG", dir, be->ops->name, MM_ADAPTER_CONTEXT_TOKENS,
             d->adapter->cfg.input_dim, W, H);
    if (mm_pool_worker_run(&c, "decode", decode_job, d) != MM_OK) {
        LOG_ERROR("mm-decoder: %s", mm_error_last());
        goto done;
    }
    rc = 0;
done:
    mm_decoder_free(d);
    mm_backend_free(be);
    return rc;
}
