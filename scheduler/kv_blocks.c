/* See kv_blocks.h. Policy (who gets blocks, who is preempted) is scheduler.c's job. */
#include "kv_blocks.h"

mm_status mm_kv_blocks_init(int32_t n_blocks, int32_t block_size, mm_kv_blocks *bm) {
    bm->pool = NULL;
    return mm_kv_cache_init(NULL, 0, n_blocks, block_size, 1, 1, &bm->pool);
}

void mm_kv_blocks_free(mm_kv_blocks *bm) {
    mm_kv_cache_free(bm->pool);
    bm->pool = NULL;
}

int32_t mm_kv_blocks_total(const mm_kv_blocks *bm) { return bm->pool->n_blocks; }
int32_t mm_kv_blocks_used(const mm_kv_blocks *bm) { return bm->pool->n_blocks - bm->pool->n_free; }
int32_t mm_kv_blocks_size(const mm_kv_blocks *bm) { return bm->pool->block_size; }

int32_t mm_kv_blocks_missing(const mm_kv_blocks *bm, const mm_kv_seq *seq, int32_t n_tokens) {
    int32_t need = mm_kv_cache_blocks_for(n_tokens, bm->pool->block_size) - seq->n_blocks;
    return need > 0 ? need : 0;
}

mm_status mm_kv_blocks_grow(mm_kv_blocks *bm, mm_kv_seq *seq, int32_t n_tokens, int *grown) {
    *grown = 0;
    if (mm_kv_blocks_missing(bm, seq, n_tokens) > bm->pool->n_free) return MM_OK;
    CHECK(mm_kv_seq_reserve(bm->pool, seq, n_tokens));
    *grown = 1;
    return MM_OK;
}

void mm_kv_blocks_release(mm_kv_blocks *bm, mm_kv_seq *seq) { mm_kv_seq_release(bm->pool, seq); }
