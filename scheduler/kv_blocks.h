/* The coordinator's KV block manager: decides which MM_KV_BLOCK_SIZE-token blocks each sequence
 * owns. Every stage holds the same number of blocks for its own layers, so this one
 * table serves all stages (they never allocate).
 *
 * Automatic prefix caching (vLLM's design): a full block whose K/V the stages hold is
 * published under the hash of its contents chained over every block before it
 * (block_hash.h), so another sequence starting with the same rows takes the block
 * instead of recomputing it. Blocks are reference counted; only full blocks are ever
 * shared, and nobody writes into a full block, so shared blocks are read-only and no
 * copy-on-write is needed. A block whose last holder lets go keeps its contents
 * (cached, reference count 0) and is evicted, least recently released first, only when
 * an allocation finds no empty block. Cached blocks count as free for admission. */
#ifndef MM_KV_BLOCKS_H
#define MM_KV_BLOCKS_H

#include <stdint.h>

#include "model/kv_cache.h"
#include "block_hash.h"

typedef struct {
    int32_t n_blocks, block_size;
    int prefix_cache;         /* 0: nothing is published or looked up */
    int32_t *ref;             /* [n_blocks] sequences holding the block */
    int32_t *empty;           /* [n_blocks] stack of blocks with no cached contents, ref 0 */
    int32_t n_empty;
    mm_block_hash *hash;      /* [n_blocks] contents of a published block */
    uint8_t *published;       /* [n_blocks] 1: in the hash table under hash[b] */
    int32_t *older, *newer;   /* [n_blocks] the evictable list (published, ref 0), oldest first; -1 ends */
    int32_t oldest, newest, n_evictable;
    int32_t *bucket;          /* [n_buckets] first published block of the bucket, -1 */
    int32_t *next_in_bucket;  /* [n_blocks] */
    int32_t n_buckets;
    uint64_t evictions;       /* published blocks dropped to make room */
} mm_kv_blocks;

mm_status mm_kv_blocks_init(int32_t n_blocks, int32_t block_size, int prefix_cache, mm_kv_blocks *bm);
void mm_kv_blocks_free(mm_kv_blocks *bm);

int32_t mm_kv_blocks_total(const mm_kv_blocks *bm);
/* Blocks held by at least one sequence. */
int32_t mm_kv_blocks_used(const mm_kv_blocks *bm);
/* Blocks held by nobody that keep a published prefix (evictable). */
int32_t mm_kv_blocks_cached(const mm_kv_blocks *bm);
int32_t mm_kv_blocks_size(const mm_kv_blocks *bm);
/* Extra blocks seq needs to hold n_tokens tokens (0 if it has enough). */
int32_t mm_kv_blocks_missing(const mm_kv_blocks *bm, const mm_kv_seq *seq, int32_t n_tokens);
/* Grows seq to n_tokens tokens if enough blocks are empty or evictable: 1 on success,
 * 0 (nothing changed) when they are not. Errors only for allocation failures of the table. */
mm_status mm_kv_blocks_grow(mm_kv_blocks *bm, mm_kv_seq *seq, int32_t n_tokens, int *grown);
/* How many of hashes[0..n) are published, as a prefix (0 when the cache is off). No
 * side effects. */
int32_t mm_kv_blocks_match(const mm_kv_blocks *bm, const mm_block_hash *hashes, int32_t n);
/* Gives seq (which holds no block) the n_hit published blocks of hashes[0..n_hit) (a
 * match result), then grows it to n_tokens, all or nothing: *ok = 0 and nothing
 * changed when the blocks are not there. */
mm_status mm_kv_blocks_take_prefix(mm_kv_blocks *bm, mm_kv_seq *seq, const mm_block_hash *hashes, int32_t n_hit,
                                   int32_t n_tokens, int *ok);
/* Publishes block under h once its K/V are complete (every stage computed all its
 * rows). A hash already published (another sequence computed the same prefix at the
 * same time) leaves the block private. */
void mm_kv_blocks_publish(mm_kv_blocks *bm, int32_t block, const mm_block_hash *h);
/* Lets go of all of seq's blocks (last block first, so a prefix's tail is evicted
 * before its head) and resets it. */
void mm_kv_blocks_release(mm_kv_blocks *bm, mm_kv_seq *seq);

#endif
