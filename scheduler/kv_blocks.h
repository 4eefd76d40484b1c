/* The coordinator's KV block manager: decides which MM_KV_BLOCK_SIZE-token blocks each sequence
 * owns. Every stage holds the same number of blocks for its own layers, so this one
 * table serves all stages (they never allocate). The free list itself is model/
 * kv_cache.c's allocator, used with zero layers: one allocator, no cache memory here. */
#ifndef MM_KV_BLOCKS_H
#define MM_KV_BLOCKS_H

#include <stdint.h>

#include "model/kv_cache.h"

typedef struct {
    mm_kv_cache *pool; /* n_layers = 0: the free list only */
} mm_kv_blocks;

mm_status mm_kv_blocks_init(int32_t n_blocks, int32_t block_size, mm_kv_blocks *bm);
void mm_kv_blocks_free(mm_kv_blocks *bm);

int32_t mm_kv_blocks_total(const mm_kv_blocks *bm);
int32_t mm_kv_blocks_used(const mm_kv_blocks *bm);
int32_t mm_kv_blocks_size(const mm_kv_blocks *bm);
/* Extra blocks seq needs to hold n_tokens tokens (0 if it has enough). */
int32_t mm_kv_blocks_missing(const mm_kv_blocks *bm, const mm_kv_seq *seq, int32_t n_tokens);
/* Grows seq to n_tokens tokens if the blocks are free: 1 on success, 0 (nothing
 * changed) when they are not. Errors only for allocation failures of the table. */
mm_status mm_kv_blocks_grow(mm_kv_blocks *bm, mm_kv_seq *seq, int32_t n_tokens, int *grown);
void mm_kv_blocks_release(mm_kv_blocks *bm, mm_kv_seq *seq);

#endif
