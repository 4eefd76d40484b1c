/* The coordinator's view of the diffusion decoder pool: visual tokens in ([n_tokens, dim]
 * f32, as the vision head produced them), PNG bytes out, asynchronously by job id, through
 * mm-decoder workers behind a broker (pool_broker.h). Only the scheduler thread calls it;
 * nothing blocks. A worker whose answer is not a PNG of the size it claims is dropped and
 * the job goes elsewhere. */
#ifndef MM_COORD_DECODER_POOL_H
#define MM_COORD_DECODER_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "coordinator/pool_broker.h"
#include "model/image_params.h"

typedef struct {
    uint64_t job_id;
    mm_status status;     /* MM_OK, or the worker's reason */
    char error[384];      /* when status != MM_OK */
    uint8_t *png;         /* [png_len] malloc'd PNG file bytes, owned by the receiver (NULL on error) */
    size_t png_len;
    int32_t width, height;
} mm_decode_result;

typedef struct mm_decoder_pool mm_decoder_pool;

/* n_tokens, dim: the token shape every job carries (image_tokens x visual_dim). */
mm_status mm_decoder_pool_init(const mm_pool_settings *s, int32_t n_tokens, int32_t dim, mm_decoder_pool **out);
void mm_decoder_pool_free(mm_decoder_pool *d);

/* Queues one image drawn with the settings how; tokens [n_tokens, dim] are copied. */
mm_status mm_decoder_pool_submit(mm_decoder_pool *d, uint64_t job_id, const float *tokens,
                                 const mm_image_params *how);
/* Pumps the broker; 1 and *out when a result is ready, 0 when none is. Never blocks. */
int mm_decoder_pool_poll(mm_decoder_pool *d, mm_decode_result *out);
/* Forgets a job (its request is gone); a late answer is dropped. */
void mm_decoder_pool_cancel(mm_decoder_pool *d, uint64_t job_id);

int mm_decoder_pool_workers_alive(const mm_decoder_pool *d);
void mm_decoder_pool_get_stats(const mm_decoder_pool *d, mm_pool_stats *out);
/* The pool's ROUTER socket, for a zmq_poll item. */
void *mm_decoder_pool_socket(const mm_decoder_pool *d);

#endif
