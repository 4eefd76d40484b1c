/* The embedding cache (embed_cache.h): entries on a doubly linked list in recency order
 * (head = most recent) for eviction, and in a chained hash table on the key for lookup.
 * The key is already a uniform hash, so its first bytes index the table. */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "embed_cache.h"

typedef struct entry {
    struct entry *newer, *older; /* recency list */
    struct entry *chain;         /* next in the same bucket */
    uint8_t key[MM_EMBED_KEY_BYTES];
    float *tokens;               /* [n_floats] */
} entry;

struct mm_embed_cache {
    size_t max_bytes, n_floats;
    entry **buckets;             /* [n_buckets] */
    size_t n_buckets;
    entry *newest, *oldest;
    mm_embed_cache_stats st;
};

static size_t bucket_of(const mm_embed_cache *c, const uint8_t *key) {
    uint64_t h;
    memcpy(&h, key, sizeof h);
    return (size_t)(h % c->n_buckets);
}

mm_status mm_embed_cache_init(size_t max_bytes, size_t n_floats, mm_embed_cache **out) {
    if (n_floats == 0) return MM_ERROR(MM_ERR_INVALID, "embedding cache: entries of 0 floats");
    if (sodium_init() < 0) return MM_ERROR(MM_ERR_INTERNAL, "libsodium did not initialise");
    mm_embed_cache *c = calloc(1, sizeof *c);
    CHECK(CHECK_ALLOC(c));
    c->max_bytes = max_bytes, c->n_floats = n_floats;
    size_t fit = max_bytes / (n_floats * sizeof(float));
    c->n_buckets = fit < 16 ? 16 : fit;
    c->buckets = calloc(c->n_buckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return MM_ERROR(MM_ERR_NOMEM, "embedding cache table of %zu buckets", fit);
    }
    *out = c;
    return MM_OK;
}

static void unlink_recency(mm_embed_cache *c, entry *e) {
    if (e->newer) e->newer->older = e->older;
    else c->newest = e->older;
    if (e->older) e->older->newer = e->newer;
    else c->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void link_newest(mm_embed_cache *c, entry *e) {
    e->older = c->newest, e->newer = NULL;
    if (c->newest) c->newest->newer = e;
    else c->oldest = e;
    c->newest = e;
}

static entry *find(const mm_embed_cache *c, const uint8_t *key) {
    for (entry *e = c->buckets[bucket_of(c, key)]; e; e = e->chain)
        if (memcmp(e->key, key, MM_EMBED_KEY_BYTES) == 0) return e;
    return NULL;
}

static void evict_oldest(mm_embed_cache *c) {
    entry *e = c->oldest;
    unlink_recency(c, e);
    entry **p = &c->buckets[bucket_of(c, e->key)];
    while (*p != e) p = &(*p)->chain;
    *p = e->chain;
    free(e->tokens);
    free(e);
    c->st.entries--;
    c->st.bytes -= c->n_floats * sizeof(float);
    c->st.evictions++;
}

void mm_embed_cache_free(mm_embed_cache *c) {
    if (!c) return;
    for (entry *e = c->newest; e;) {
        entry *older = e->older;
        free(e->tokens);
        free(e);
        e = older;
    }
    free(c->buckets);
    free(c);
}

mm_status mm_embed_cache_key(const uint8_t *data, size_t len, uint8_t key[MM_EMBED_KEY_BYTES]) {
    if (crypto_generichash(key, MM_EMBED_KEY_BYTES, data, len, NULL, 0) != 0)
        return MM_ERROR(MM_ERR_INTERNAL, "BLAKE2b of %zu bytes failed", len);
    return MM_OK;
}

const float *mm_embed_cache_get(mm_embed_cache *c, const uint8_t key[MM_EMBED_KEY_BYTES]) {
    entry *e = find(c, key);
    if (!e) {
        c->st.misses++;
        return NULL;
    }
    c->st.hits++;
    unlink_recency(c, e);
    link_newest(c, e);
    return e->tokens;
}

mm_status mm_embed_cache_put(mm_embed_cache *c, const uint8_t key[MM_EMBED_KEY_BYTES], const float *tokens) {
    const size_t bytes = c->n_floats * sizeof(float);
    if (bytes > c->max_bytes) return MM_OK; /* off, or one entry would not fit */
    entry *e = find(c, key);
    if (e) {
        memcpy(e->tokens, tokens, bytes);
        unlink_recency(c, e);
        link_newest(c, e);
        return MM_OK;
    }
    while (c->st.bytes + bytes > c->max_bytes) evict_oldest(c);
    e = calloc(1, sizeof *e);
    CHECK(CHECK_ALLOC(e));
    e->tokens = malloc(bytes);
    if (!e->tokens) {
        free(e);
        return MM_ERROR(MM_ERR_NOMEM, "embedding cache entry of %zu bytes", bytes);
    }
    memcpy(e->tokens, tokens, bytes);
    memcpy(e->key, key, MM_EMBED_KEY_BYTES);
    size_t b = bucket_of(c, key);
    e->chain = c->buckets[b];
    c->buckets[b] = e;
    link_newest(c, e);
    c->st.entries++;
    c->st.bytes += bytes;
    return MM_OK;
}

void mm_embed_cache_stats_get(const mm_embed_cache *c, mm_embed_cache_stats *out) { *out = c->st; }
