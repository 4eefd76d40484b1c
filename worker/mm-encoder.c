/* mm-encoder: a worker of the encoder pool (DESIGN section 2). Loads SigLIP once, joins
 * the coordinator's "encode" ROUTER and turns image file bytes into visual tokens:
 *
 *   mm-encoder --model DIR --connect ENDPOINT [--max-side PIXELS] [shared flags]
 *
 * JOB payload: PNG/JPEG bytes (untrusted) -> RESULT payload f32 [n_tokens, dim], the
 * same function as the in-process encoder (mm_siglip_encode_image_bytes), so the tokens
 * are bit-identical. DIR is a model root (metamorph.json: its vision/ part, n_tokens =
 * num_image_tokens of its llm/) or a SigLIP directory (n_tokens = 64). Wiring only. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/runtime.h"
#include "model/manifest.h"
#include "model/metamorph.h"
#include "model/siglip.h"
#include "pool_worker.h"

#define DEFAULT_IMAGE_TOKENS 64 /* MetaMorph's num_image_tokens, when only a vision dir is given */

typedef struct {
    mm_backend *be;
    mm_siglip *sig;
    int32_t n_tokens;     /* visual tokens per image */
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
    const int32_t dim = e->sig->cfg.hidden;
    float *tokens = malloc((size_t)e->n_tokens * (size_t)dim * sizeof(float)); /* [n_tokens, dim] */
    CHECK(CHECK_ALLOC(tokens));
    mm_status s = mm_siglip_encode_image_bytes(e->sig, payload, len, &e->lim, e->n_tokens, e->pixels, tokens);
    if (s != MM_OK) {
        free(tokens);
        return s;
    }
    out->n_tokens = e->n_tokens, out->dim = dim;
    out->payload = (uint8_t *)tokens, out->len = (size_t)e->n_tokens * (size_t)dim * sizeof(float);
    return MM_OK;
}

/* The LLM's MetaMorph config when dir is a model root with a MetaMorph LLM (n_image_tokens,
 * mm_hidden, the SigLIP layer), else *mc zeroed but for the last layer: a SigLIP
 * directory given directly. */
static mm_status metamorph_config(const char *dir, mm_metamorph_config *mc) {
    memset(mc, 0, sizeof *mc);
    mc->vision_select_layer = -1;
    mm_model_paths paths;
    if (mm_model_paths_resolve(dir, &paths) != MM_OK || !mm_metamorph_is_checkpoint(paths.llm)) {
        mm_error_clear();
        return MM_OK;
    }
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", paths.llm);
    mm_tokenizer *tok;
    CHECK(mm_tokenizer_load(tok_path, &tok));
    mm_status s = mm_metamorph_config_load(paths.llm, tok, mc);
    mm_tokenizer_free(tok);
    return s;
}

static mm_status encoder_load(const mm_pool_worker_config *c, encoder *e) {
    char dir[4096];
    mm_metamorph_config mc;
    CHECK(mm_model_part_dir(c->model, "vision", dir, sizeof dir));
    CHECK(metamorph_config(c->model, &mc));
    e->n_tokens = mc.n_image_tokens ? mc.n_image_tokens : DEFAULT_IMAGE_TOKENS;
    CHECK(mm_backend_init(c->backend, c->threads, &e->be));
    CHECK(mm_siglip_load(dir, e->be, &e->sig));
    CHECK(mm_siglip_select_layer(e->sig, mc.vision_select_layer));
    if (mc.mm_hidden && mc.mm_hidden != e->sig->cfg.hidden)
        return MM_ERROR(MM_ERR_FORMAT, "%s: SigLIP hidden size %d != the LLM's mm_hidden_size %d", dir,
                        e->sig->cfg.hidden, mc.mm_hidden);
    const size_t S = (size_t)e->sig->cfg.image_size;
    e->pixels = malloc(3 * S * S * sizeof(float));
    CHECK(CHECK_ALLOC(e->pixels));
    e->lim.max_bytes = (size_t)c->max_message_mb << 20;
    LOG_INFO("mm-encoder: SigLIP %s on %s, %d tokens x %d per image from hidden state %d of %d", dir,
             e->be->ops->name, e->n_tokens, e->sig->cfg.hidden, e->sig->run_layers, e->sig->cfg.n_layers);
    return MM_OK;
}

int main(int argc, char **argv) {
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    encoder e = {.lim = mm_image_limits_default()};
    mm_pool_worker_config c;
    int pr = mm_pool_worker_parse(argc, argv, "mm-encoder", "encode", usage, take_flag, &e, &c);
    if (pr != 0) return pr > 0 ? 0 : 2;
    int rc = 1;
    if (encoder_load(&c, &e) != MM_OK || mm_pool_worker_run(&c, "encode", encode_job, &e) != MM_OK)
        LOG_ERROR("mm-encoder: %s", mm_error_last());
    else
        rc = 0;
    free(e.pixels);
    mm_siglip_free(e.sig);
    mm_backend_free(e.be);
    return rc;
}
