/* Visual tokens of recently seen images, so the same image sent twice is encoded once.
 * Key: BLAKE2b-256 of the image file bytes (libsodium), so equal bytes are equal keys and
 * nothing else is in practice. Value: [n_tokens, dim] f32. Bounded by bytes, least
 * recently used out first. Only the scheduler thread uses it: no locks. */
#ifndef MM_COORD_EMBED_CACHE_H
#define MM_COORD_EMBED_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define MM_EMBED_KEY_BYTES 32

typedef struct mm_embed_cache mm_embed_cache;

typedef struct {
    uint64_t hits, misses;   /* lookups */
    uint64_t evictions;
    size_t bytes;            /* token bytes held */
    int entries;
} mm_embed_cache_stats;

/* max_bytes: token bytes held at most (0: the cache stores nothing); n_floats: floats
 * per entry (n_tokens * dim). */
mm_status mm_embed_cache_init(size_t max_bytes, size_t n_floats, mm_embed_cache **out);
void mm_embed_cache_free(mm_embed_cache *c);

/* key = BLAKE2b-256(data[0..len)). */
mm_status mm_embed_cache_key(const uint8_t *data, size_t len, uint8_t key[MM_EMBED_KEY_BYTES]);

/* The tokens [n_floats] for key (now the most recently used), or NULL; counts a hit or a
 * miss. The pointer is valid until the next put. */
const float *mm_embed_cache_get(mm_embed_cache *c, const uint8_t key[MM_EMBED_KEY_BYTES]);
/* Stores a copy of tokens [n_floats] under key, evicting the least recently used entries
 * to stay within max_bytes. A key already present is refreshed. */
mm_status mm_embed_cache_put(mm_embed_cache *c, const uint8_t key[MM_EMBED_KEY_BYTES], const float *tokens);
void mm_embed_cache_stats_get(const mm_embed_cache *c, mm_embed_cache_stats *out);

#endif
