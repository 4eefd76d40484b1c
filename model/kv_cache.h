/* Paged KV cache of the layers one process owns: per layer, K and V arrays of
 * [n_blocks, n_kv_heads, block_size, head_dim] f32 in backend memory, plus a free
 * list of blocks and per-sequence block tables. (In the service the coordinator's
 * block manager decides block ids and every stage mirrors them; this allocator serves
 * single-process use: mm-run, tests and benchmarks.) */
#ifndef MM_KV_CACHE_H
#define MM_KV_CACHE_H

#include <stdint.h>

#include "kernels/backend.h"

/* Tokens per KV block in the service (the kv_block_size tunable can only be this: one
 * block table serves all stages) and in the tools, tests and benchmarks that mirror it.
 * The cache itself takes any block size. */
#define MM_KV_BLOCK_SIZE 16

typedef struct {
    mm_backend *be;
    int32_t n_layers, n_blocks, block_size, n_kv_heads, head_dim;
    mm_dtype dtype;     /* F32, or BF16 for bf16 checkpoints (as transformers keeps it) */
    void **k, **v;      /* [n_layers] -> [n_blocks, n_kv_heads, block_size, head_dim] of dtype */
    int32_t *free_ids;  /* [n_blocks] stack of free block ids */
    int32_t n_free;
} mm_kv_cache;

typedef struct {
    int32_t *blocks;    /* [cap] block table */
    int32_t n_blocks, cap;
    int32_t n_tokens;   /* tokens whose K/V are stored (the next position) */
} mm_kv_seq;

mm_status mm_kv_cache_init_typed(mm_backend *be, int32_t n_layers, int32_t n_blocks, int32_t block_size,
                                 int32_t n_kv_heads, int32_t head_dim, mm_dtype dtype, mm_kv_cache **out);
/* An f32 cache. */
mm_status mm_kv_cache_init(mm_backend *be, int32_t n_layers, int32_t n_blocks, int32_t block_size,
                           int32_t n_kv_heads, int32_t head_dim, mm_kv_cache **out);
void mm_kv_cache_free(mm_kv_cache *c);
/* Blocks needed to hold n_tokens tokens for one sequence, given a per-process budget
 * in bytes: helper for sizing caches. */
int32_t mm_kv_cache_blocks_for(int32_t n_tokens, int32_t block_size);

/* Makes sure seq has blocks for positions [0, n_tokens). MM_ERR_NOMEM when the cache
 * is full (nothing is allocated then). */
mm_status mm_kv_seq_reserve(mm_kv_cache *c, mm_kv_seq *seq, int32_t n_tokens);
/* Returns all of seq's blocks to the cache and resets it. */
void mm_kv_seq_release(mm_kv_cache *c, mm_kv_seq *seq);

#endif
