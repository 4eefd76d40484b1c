/* The coordinator's view of the vision encoder pool: image bytes in (PNG/JPEG,
 * untrusted), visual tokens out ([n_tokens, dim] L2-normalised SigLIP space),
 * asynchronously, by job id, through mm-encoder workers behind a broker (pool_broker.h,
 * DESIGN section 2). Only the scheduler thread calls it; it never waits on an encode.
 * The same shape of API as the decoder pool (decoder_pool.h). An embedding cache keyed
 * by a hash of the image bytes answers an image seen before without a job, and an image
 * already being encoded for another job is encoded once for both. Results of the wrong
 * shape drop their worker. Jobs are idempotent and a result for a job nobody waits for
 * any more is simply dropped. */
#ifndef MM_COORD_ENCODER_POOL_H
#define MM_COORD_ENCODER_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "coordinator/embed_cache.h"
#include "coordinator/pool_broker.h"

typedef struct {
    uint64_t job_id;
    mm_status status;  /* MM_OK, or why: FORMAT/INVALID/UNSUPPORTED = the image is refused */
    char error[384];   /* when status != MM_OK */
    float *tokens;     /* [n_tokens, dim] malloc'd, owned by the receiver (NULL on error) */
} mm_encode_result;

typedef struct {
    mm_pool_settings pool;   /* encode_bind and the pool_* tunables */
    int32_t n_tokens;        /* visual tokens per image (num_image_tokens, 64): every result's shape */
    int32_t dim;             /* width of a visual token (SigLIP hidden, 1152) */
    int32_t embed_cache_mb;  /* 0: no cache (in-flight coalescing still happens) */
} mm_encoder_pool_params;

typedef struct {
    mm_pool_stats pool;
    uint64_t cache_hits, cache_misses; /* submits answered from the cache / not */
    uint64_t coalesced;      /* submits that joined an encode already in flight */
    size_t cache_bytes;
    int cache_entries;
} mm_encoder_pool_stats;

typedef struct mm_encoder_pool mm_encoder_pool;

mm_status mm_encoder_pool_init(const mm_encoder_pool_params *p, mm_encoder_pool **out);
void mm_encoder_pool_free(mm_encoder_pool *e);

/* Queues one image; data is copied. key gets the image's content key (BLAKE2b-256 of
 * data, embed_cache.h), which the prefix cache names its rows by. */
mm_status mm_encoder_pool_submit(mm_encoder_pool *e, uint64_t job_id, const uint8_t *data, size_t len,
                                 uint8_t key[MM_EMBED_KEY_BYTES]);
/* Pumps the broker; 1 and *out when a result is ready, 0 when none is. Never blocks. */
int mm_encoder_pool_poll(mm_encoder_pool *e, mm_encode_result *out);
/* Forgets a job (its request is gone): dropped if not started, its result discarded. */
void mm_encoder_pool_cancel(mm_encoder_pool *e, uint64_t job_id);

int mm_encoder_pool_workers_alive(const mm_encoder_pool *e);
void mm_encoder_pool_get_stats(const mm_encoder_pool *e, mm_encoder_pool_stats *out);
/* The pool's ROUTER socket, for a zmq_poll item. */
void *mm_encoder_pool_socket(const mm_encoder_pool *e);

#endif
