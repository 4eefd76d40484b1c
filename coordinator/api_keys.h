/* API keys of the service's doors (gRPC `authorization: Bearer KEY` metadata, the HTTP
 * `Authorization: Bearer KEY` header), read from the operator's api_keys_file:
 *
 *   # NAME  KEY            a key in the clear (at least 16 characters), or
 *   batch-team  blake2b:HEX  its BLAKE2b-256 in hex (hashed at rest: `mmctl apikey NAME`)
 *
 * A key is never kept in memory in the clear: each entry is its BLAKE2b-256, and a
 * presented key is hashed and compared with every entry in constant time, so neither
 * timing nor a leaked file in hashed form gives the key away. The name is what logs and
 * metrics show. mm_api_keys_reload (SIGHUP) swaps in a new set atomically; a file that
 * does not parse leaves the old set in place. Thread-safe. */
#ifndef MM_COORD_API_KEYS_H
#define MM_COORD_API_KEYS_H

#include <stddef.h>

#include "common/status.h"

#define MM_API_KEY_NAME_MAX 64
#define MM_API_KEY_MIN_LEN 16

typedef struct mm_api_keys mm_api_keys;

/* Reads path (every line checked: a bad line is an error naming it). */
mm_status mm_api_keys_load(const char *path, mm_api_keys **out);
/* Re-reads the same file; on error the keys in force stay and the error is returned. */
mm_status mm_api_keys_reload(mm_api_keys *k);
void mm_api_keys_free(mm_api_keys *k);
size_t mm_api_keys_count(mm_api_keys *k);

/* Checks an authorization value ("Bearer KEY", the scheme case-insensitive); NULL or
 * empty is missing. 1 and the key's name in name[MM_API_KEY_NAME_MAX + 1] when it
 * matches a key in force, else 0. */
int mm_api_keys_check(mm_api_keys *k, const char *authorization, size_t len, char *name);

/* "blake2b:" + hex BLAKE2b-256 of key, into out[8 + 64 + 1] (the hashed-at-rest form). */
void mm_api_key_hash_text(const char *key, char *out);

#endif
