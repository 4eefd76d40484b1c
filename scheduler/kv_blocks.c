/* See kv_blocks.h. Policy (who gets blocks, who is preempted, which hashes a sequence
 * has) is scheduler.c's job; this file only keeps the books: reference counts, the
 * stack of empty blocks, the hash table of published blocks and their eviction order.
 * The hash is already uniform, so its first bytes index the table. */
#include "kv_blocks.h"

#include <stdlib.h>
#include <string.h>

mm_status mm_kv_blocks_init(int32_t n_blocks, int32_t block_size, int prefix_cache, mm_kv_blocks *bm) {
    memset(bm, 0, sizeof *bm);
    if (n_blocks <= 0 || block_size <= 0)
        return MM_ERROR(MM_ERR_INVALID, "KV blocks: bad geometry (%d blocks of %d)", n_blocks, block_size);
    if (prefix_cache) CHECK(mm_block_hash_global_init());
    bm->n_blocks = n_blocks, bm->block_size = block_size, bm->prefix_cache = prefix_cache != 0;
    bm->n_buckets = n_blocks;
    size_t n = (size_t)n_blocks;
    bm->ref = calloc(n, sizeof *bm->ref);
    bm->empty = malloc(n * sizeof *bm->empty);
    bm->hash = calloc(n, sizeof *bm->hash);
    bm->published = calloc(n, sizeof *bm->published);
    bm->older = malloc(n * sizeof *bm->older);
    bm->newer = malloc(n * sizeof *bm->newer);
    bm->bucket = malloc(n * sizeof *bm->bucket);
    bm->next_in_bucket = malloc(n * sizeof *bm->next_in_bucket);
    if (!bm->ref || !bm->empty || !bm->hash || !bm->published || !bm->older || !bm->newer || !bm->bucket ||
        !bm->next_in_bucket) {
        mm_kv_blocks_free(bm);
        return MM_ERROR(MM_ERR_NOMEM, "KV block manager of %d blocks", n_blocks);
    }
    for (int32_t i = 0; i < n_blocks; i++) {
        bm->empty[i] = n_blocks - 1 - i; /* pop gives 0, 1, ... */
        bm->bucket[i] = bm->next_in_bucket[i] = bm->older[i] = bm->newer[i] = -1;
    }
    bm->n_empty = n_blocks;
    bm->oldest = bm->newest = -1;
    return MM_OK;
}

void mm_kv_blocks_free(mm_kv_blocks *bm) {
    free(bm->ref), free(bm->empty), free(bm->hash), free(bm->published);
    free(bm->older), free(bm->newer), free(bm->bucket), free(bm->next_in_bucket);
    memset(bm, 0, sizeof *bm);
}

int32_t mm_kv_blocks_total(const mm_kv_blocks *bm) { return bm->n_blocks; }
int32_t mm_kv_blocks_used(const mm_kv_blocks *bm) { return bm->n_blocks - bm->n_empty - bm->n_evictable; }
int32_t mm_kv_blocks_cached(const mm_kv_blocks *bm) { return bm->n_evictable; }
int32_t mm_kv_blocks_size(const mm_kv_blocks *bm) { return bm->block_size; }

int32_t mm_kv_blocks_missing(const mm_kv_blocks *bm, const mm_kv_seq *seq, int32_t n_tokens) {
    int32_t need = mm_kv_cache_blocks_for(n_tokens, bm->block_size) - seq->n_blocks;
    return need > 0 ? need : 0;
}

/* ---------------------------------------------------------------- hash table, eviction order */

static int32_t bucket_of(const mm_kv_blocks *bm, const mm_block_hash *h) {
    uint64_t x;
    memcpy(&x, h->b, sizeof x);
    return (int32_t)(x % (uint64_t)bm->n_buckets);
}

static int32_t lookup(const mm_kv_blocks *bm, const mm_block_hash *h) {
    for (int32_t b = bm->bucket[bucket_of(bm, h)]; b >= 0; b = bm->next_in_bucket[b])
        if (!memcmp(bm->hash[b].b, h->b, sizeof h->b)) return b;
    return -1;
}

static void unpublish(mm_kv_blocks *bm, int32_t block) {
    int32_t *p = &bm->bucket[bucket_of(bm, &bm->hash[block])];
    while (*p != block) p = &bm->next_in_bucket[*p];
    *p = bm->next_in_bucket[block];
    bm->next_in_bucket[block] = -1;
    bm->published[block] = 0;
}

static void evictable_remove(mm_kv_blocks *bm, int32_t b) {
    if (bm->older[b] >= 0) bm->newer[bm->older[b]] = bm->newer[b];
    else bm->oldest = bm->newer[b];
    if (bm->newer[b] >= 0) bm->older[bm->newer[b]] = bm->older[b];
    else bm->newest = bm->older[b];
    bm->older[b] = bm->newer[b] = -1;
    bm->n_evictable--;
}

static void evictable_push_newest(mm_kv_blocks *bm, int32_t b) {
    bm->older[b] = bm->newest, bm->newer[b] = -1;
    if (bm->newest >= 0) bm->newer[bm->newest] = b;
    else bm->oldest = b;
    bm->newest = b;
    bm->n_evictable++;
}

/* A block for new contents: an empty one, else the least recently released cached one. */
static int32_t take_fresh(mm_kv_blocks *bm) {
    int32_t b;
    if (bm->n_empty > 0) {
        b = bm->empty[--bm->n_empty];
    } else {
        b = bm->oldest;
        evictable_remove(bm, b);
        unpublish(bm, b);
        bm->evictions++;
    }
    bm->ref[b] = 1;
    return b;
}

/* ---------------------------------------------------------------- sequences */

static mm_status table_reserve(mm_kv_seq *seq, int32_t need) {
    if (need <= seq->cap) return MM_OK;
    int32_t cap = seq->cap ? seq->cap : 8;
    while (cap < need) cap *= 2;
    int32_t *b = realloc(seq->blocks, (size_t)cap * sizeof *b);
    CHECK(CHECK_ALLOC(b));
    seq->blocks = b, seq->cap = cap;
    return MM_OK;
}

mm_status mm_kv_blocks_grow(mm_kv_blocks *bm, mm_kv_seq *seq, int32_t n_tokens, int *grown) {
    *grown = 0;
    int32_t missing = mm_kv_blocks_missing(bm, seq, n_tokens);
    if (missing > bm->n_empty + bm->n_evictable) return MM_OK;
    CHECK(table_reserve(seq, seq->n_blocks + missing));
    while (missing-- > 0) seq->blocks[seq->n_blocks++] = take_fresh(bm);
    *grown = 1;
    return MM_OK;
}

int32_t mm_kv_blocks_match(const mm_kv_blocks *bm, const mm_block_hash *hashes, int32_t n) {
    if (!bm->prefix_cache) return 0;
    int32_t k = 0;
    while (k < n && lookup(bm, &hashes[k]) >= 0) k++;
    return k;
}

mm_status mm_kv_blocks_take_prefix(mm_kv_blocks *bm, mm_kv_seq *seq, const mm_block_hash *hashes, int32_t n_hit,
                                   int32_t n_tokens, int *ok) {
    *ok = 0;
    if (seq->n_blocks != 0) return MM_ERROR(MM_ERR_INTERNAL, "a prefix for a sequence that holds blocks");
    if (n_hit < 0 || (int64_t)n_hit * bm->block_size > n_tokens)
        return MM_ERROR(MM_ERR_INTERNAL, "a prefix of %d blocks for %d tokens", n_hit, n_tokens);
    /* Hit blocks nobody holds leave the evictable list: they are not free for the rest. */
    int32_t fresh = mm_kv_cache_blocks_for(n_tokens, bm->block_size) - n_hit, idle_hits = 0;
    for (int32_t k = 0; k < n_hit; k++) {
        int32_t b = lookup(bm, &hashes[k]);
        if (b < 0) return MM_ERROR(MM_ERR_INTERNAL, "prefix block %d is not published", k);
        idle_hits += bm->ref[b] == 0;
    }
    if (fresh + idle_hits > bm->n_empty + bm->n_evictable) return MM_OK;
    CHECK(table_reserve(seq, n_hit + fresh));
    for (int32_t k = 0; k < n_hit; k++) {
        int32_t b = lookup(bm, &hashes[k]);
        if (bm->ref[b]++ == 0) evictable_remove(bm, b);
        seq->blocks[seq->n_blocks++] = b;
    }
    while (fresh-- > 0) seq->blocks[seq->n_blocks++] = take_fresh(bm);
    *ok = 1;
    return MM_OK;
}

void mm_kv_blocks_publish(mm_kv_blocks *bm, int32_t block, const mm_block_hash *h) {
    if (!bm->prefix_cache || bm->published[block] || lookup(bm, h) >= 0) return;
    bm->hash[block] = *h;
    int32_t *head = &bm->bucket[bucket_of(bm, h)];
    bm->next_in_bucket[block] = *head;
    *head = block;
    bm->published[block] = 1;
}

void mm_kv_blocks_release(mm_kv_blocks *bm, mm_kv_seq *seq) {
    for (int32_t i = seq->n_blocks - 1; i >= 0; i--) {
        int32_t b = seq->blocks[i];
        if (--bm->ref[b] > 0) continue;
        if (bm->published[b]) evictable_push_newest(bm, b);
        else bm->empty[bm->n_empty++] = b;
    }
    free(seq->blocks);
    memset(seq, 0, sizeof *seq);
}
