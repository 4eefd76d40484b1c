/* The identity of a full KV block's contents, for prefix caching: BLAKE2b-256
 * (libsodium) over the previous block's hash and the block's rows, so equal hashes
 * mean equal rows at equal positions after an equal prefix, hence equal K/V (the
 * kernels are batch-invariant: a row's K/V depend only on the rows up to it). A row is
 * a token id, or a row of an input image named by the image's content key (the
 * embedding cache's BLAKE2b-256 of the file bytes) and the row's index in the image.
 * Each row is written with a tag, so no two row sequences encode alike. It knows
 * nothing of sequences or blocks: kv_blocks.c and scheduler.c use it. */
#ifndef MM_BLOCK_HASH_H
#define MM_BLOCK_HASH_H

#include <sodium.h>
#include <stdint.h>

#include "common/status.h"

#define MM_BLOCK_HASH_BYTES 32
#define MM_IMAGE_KEY_BYTES 32

typedef struct {
    uint8_t b[MM_BLOCK_HASH_BYTES];
} mm_block_hash;

typedef struct {
    crypto_generichash_state st;
} mm_block_hasher;

/* libsodium's own start-up (idempotent, thread-safe). */
mm_status mm_block_hash_global_init(void);
/* Starts the hash of a block that follows prev (NULL: the sequence's first block). */
void mm_block_hash_begin(mm_block_hasher *h, const mm_block_hash *prev);
void mm_block_hash_token(mm_block_hasher *h, int32_t token);
void mm_block_hash_image_row(mm_block_hasher *h, const uint8_t key[MM_IMAGE_KEY_BYTES], int32_t row);
void mm_block_hash_end(mm_block_hasher *h, mm_block_hash *out);

#endif
