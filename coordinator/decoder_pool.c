/* The diffusion decoder pool (decoder_pool.h): a thin layer over the broker that turns
 * tokens and diffusion settings into a decode JOB and checks that what comes back is a
 * PNG whose header agrees with the size the worker claims. The tokens travel as the
 * job's payload without another copy (the broker owns the buffer). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "decoder_pool.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pool payloads are little-endian f32"
#endif

struct mm_decoder_pool {
    mm_pool_broker *broker;
    int32_t n_tokens, dim;
};

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* The broker's check: PNG signature, then the IHDR chunk's size equals width x height. */
static mm_status check_png(void *user, const mm_pool_result *r) {
    static const uint8_t SIGNATURE[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    (void)user;
    if (r->len < 24 || memcmp(r->payload, SIGNATURE, sizeof SIGNATURE) != 0 || memcmp(r->payload + 12, "IHDR", 4) != 0)
        return MM_ERROR(MM_ERR_FORMAT, "%zu payload bytes that are not a PNG", r->len);
    uint32_t w = be32(r->payload + 16), h = be32(r->payload + 20);
    if (r->width <= 0 || r->height <= 0 || w != (uint32_t)r->width || h != (uint32_t)r->height)
        return MM_ERROR(MM_ERR_FORMAT, "a %ux%u PNG announced as %dx%d", w, h, r->width, r->height);
    return MM_OK;
}

mm_status mm_decoder_pool_init(const mm_pool_settings *s, int32_t n_tokens, int32_t dim, mm_decoder_pool **out) {
    if (n_tokens <= 0 || dim <= 0) return MM_ERROR(MM_ERR_INVALID, "decoder pool: tokens [%d, %d]", n_tokens, dim);
    mm_decoder_pool *d = calloc(1, sizeof *d);
    CHECK(CHECK_ALLOC(d));
    d->n_tokens = n_tokens, d->dim = dim;
    mm_status st = mm_pool_broker_init(s, "decode", check_png, NULL, &d->broker);
    if (st != MM_OK) {
        free(d);
        return st;
    }
    *out = d;
    return MM_OK;
}

void mm_decoder_pool_free(mm_decoder_pool *d) {
    if (!d) return;
    mm_pool_broker_free(d->broker);
    free(d);
}

mm_status mm_decoder_pool_submit(mm_decoder_pool *d, uint64_t job_id, const float *tokens,
                                 const mm_image_params *how) {
    mm_pool_job_fields f = {.n_tokens = d->n_tokens, .dim = d->dim, .steps = how->steps, .guidance = how->guidance,
                            .seed = how->seed};
    snprintf(f.sampler, sizeof f.sampler, "%s", mm_diffusion_sampler_name(how->sampler));
    const size_t bytes = (size_t)d->n_tokens * (size_t)d->dim * sizeof(float);
    uint8_t *payload = malloc(bytes);
    if (!payload) return MM_ERROR(MM_ERR_NOMEM, "decode job %llu: %zu token bytes", (unsigned long long)job_id, bytes);
    memcpy(payload, tokens, bytes);
    return mm_pool_broker_submit(d->broker, job_id, &f, payload, bytes);
}

int mm_decoder_pool_poll(mm_decoder_pool *d, mm_decode_result *out) {
    mm_pool_result r;
    if (!mm_pool_broker_poll(d->broker, &r)) {
        mm_pool_broker_pump(d->broker, mm_now_ms());
        if (!mm_pool_broker_poll(d->broker, &r)) return 0;
    }
    memset(out, 0, sizeof *out);
    out->job_id = r.job_id, out->status = r.status;
    snprintf(out->error, sizeof out->error, "%s", r.error);
    out->png = r.payload, out->png_len = r.len;
    out->width = r.width, out->height = r.height;
    return 1;
}

void mm_decoder_pool_cancel(mm_decoder_pool *d, uint64_t job_id) { mm_pool_broker_cancel(d->broker, job_id); }

int mm_decoder_pool_workers_alive(const mm_decoder_pool *d) { return mm_pool_broker_workers_alive(d->broker); }

void mm_decoder_pool_get_stats(const mm_decoder_pool *d, mm_pool_stats *out) { mm_pool_broker_stats(d->broker, out); }

void *mm_decoder_pool_socket(const mm_decoder_pool *d) { return mm_pool_broker_socket(d->broker); }
