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
#include <stdint.h>

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

/* Limits per key (0: none): requests in flight, and tokens in flight (each request's
 * prompt + max_new_tokens, until it ends). Usage survives SIGHUP for the names kept. */
void mm_api_keys_set_limits(mm_api_keys *k, int32_t max_requests, int64_t max_tokens);
/* Takes one request of `tokens` for key `name`: 1 when within the limits; else 0, a
 * refusal counted and the reason in msg. */
int mm_api_keys_acquire(mm_api_keys *k, const char *name, int64_t tokens, char *msg, size_t cap);
/* Gives back what `requests` acquires took, `tokens` in all. */
void mm_api_keys_release(mm_api_keys *k, const char *name, int32_t requests, int64_t tokens);
/* Per-key series in the Prometheus text format (label key = the key's name, never the
 * key): metamorph_api_key_requests_total, _refused_total, _requests_in_flight,
 * _tokens_in_flight. *text malloc'd. */
mm_status mm_api_keys_render_metrics(mm_api_keys *k, char **text, size_t *len);

/* "blake2b:" + hex BLAKE2b-256 of key, into out[8 + 64 + 1] (the hashed-at-rest form). */
void mm_api_key_hash_text(const char *key, char *out);

#endif
