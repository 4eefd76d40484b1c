/* mm-encoder: a worker of the encoder pool (DESIGN section 2). Loads SigLIP once, joins
 * the coordinator's "encode" ROUTER and turns image file bytes into visual tokens:
 *
 *   mm-encoder --model DIR --connect ENDPOINT [--max-side PIXELS] [shared flags]
 *
 * JOB payload: PNG/JPEG bytes (untrusted) -> RESULT payload f32 [n_tokens, dim] from
 * mm_siglip_encode_image_bytes, the function the tests also run in process, so the
 * tokens are bit-identical. DIR is a model root or a SigLIP directory, loaded by
 * mm_vision_tower_load (the select layer and token count of the config). Wiring only. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/runtime.h"
#include "model/vision_tower.h"
#include "pool_worker.h"

typedef struct {
    mm_backend *be;
    mm_vision_tower vt;   /* vt.n_tokens visual tokens per image */
    mm_image_limits lim;  /* encoded bytes and pixels per side */
    float *pixels;        /* [3, S, S] preprocessing scratch */
} encoder;

static void usage(FILE *f) {
    fprintf(f, "usage: mm-encoder --model DIR --connect ENDPOINT [options]\n"
               "Encoder pool worker: image bytes -> visual tokens (SigLIP, reduced, L2-normalised).\n"
               "  --max-side PIXELS     largest image side accepted (default %d)\n",
            MM_IMAGE_DEFAULT_MAX_SIDE);
}

static int take_flag(void *user, const char *flag, const char *v) {
    encoder *e = user;
    if (strcmp(flag, "--max-side") != 0) return 0;
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < 1 || x > 65535) return -1;
    e->lim.max_width = e->lim.max_height = (int32_t)x;
    return 1;
}

/* One image is quick: a CANCEL only skips it when it has not started (ctx unused). */
static mm_status encode_job(void *user, const mm_pool_job_ctx *ctx, const Metamorph__Internal__PoolHeader *job,
                            const uint8_t *payload, size_t len, mm_pool_output *out) {
    (void)ctx;
    encoder *e = user;
    const int32_t dim = e->vt.sig->cfg.hidden, n_tokens = e->vt.n_tokens;
    float *tokens = malloc((size_t)n_tokens * (size_t)dim * sizeof(float)); /* [n_tokens, dim] */
    CHECK(CHECK_ALLOC(tokens));
    mm_status s = mm_siglip_encode_image_bytes(e->vt.sig, payload, len, &e->lim, n_tokens, e->pixels, tokens);
    if (s != MM_OK) {
        free(tokens);
        return s;
    }
    out->n_tokens = n_tokens, out->dim = dim;
    out->payload = (uint8_t *)tokens, out->len = (size_t)n_tokens * (size_t)dim * sizeof(float);
    return MM_OK;
}

static mm_status encoder_load(const mm_pool_worker_config *c, encoder *e) {
    CHECK(mm_backend_init(c->backend, c->threads, &e->be));
    CHECK(mm_vision_tower_load(c->model, e->be, &e->vt));
    const size_t S = (size_t)e->vt.sig->cfg.image_size;
    e->pixels = malloc(3 * S * S * sizeof(float));
    CHECK(CHECK_ALLOC(e->pixels));
    e->lim.max_bytes = (size_t)c->max_message_mb << 20;
    LOG_INFO("mm-encoder: SigLIP of %s on %s, %d tokens x %d per image from hidden state %d of %d", c->model,
             e->be->ops->name, e->vt.n_tokens, e->vt.sig->cfg.hidden, e->vt.sig->run_layers, e->vt.sig->cfg.n_layers);
    return MM_OK;
}

int main(int argc, char **argv) {
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    encoder e = {.lim = mm_image_limits_default()};
    mm_pool_worker_config c;
    int pr = mm_pool_worker_parse(argc, argv, "mm-encoder", "encode", usage, take_flag, &e, &c);
    if (pr != 0) return pr > 0 ? 0 : 2;
    int rc = 0;
    if (encoder_load(&c, &e) != MM_OK) /* the model files or the backend asked for: permanent */
        rc = MM_EXIT_CONFIG;
    else if (mm_pool_worker_run(&c, "encode", encode_job, &e) != MM_OK)
        rc = 1;
    if (rc) LOG_ERROR("mm-encoder: %s", mm_error_last());
    free(e.pixels);
    mm_vision_tower_free(&e.vt);
    mm_backend_free(e.be);
    return rc;
}
