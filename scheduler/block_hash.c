/* See block_hash.h. */
#include "block_hash.h"

#include <string.h>

enum { TAG_FIRST = 'F', TAG_PREV = 'P', TAG_TOKEN = 'T', TAG_IMAGE = 'I' };

mm_status mm_block_hash_global_init(void) {
    return sodium_init() < 0 ? MM_ERROR(MM_ERR_INTERNAL, "libsodium did not initialise") : MM_OK;
}

void mm_block_hash_begin(mm_block_hasher *h, const mm_block_hash *prev) {
    crypto_generichash_init(&h->st, NULL, 0, MM_BLOCK_HASH_BYTES);
    uint8_t tag = prev ? TAG_PREV : TAG_FIRST;
    crypto_generichash_update(&h->st, &tag, 1);
    if (prev) crypto_generichash_update(&h->st, prev->b, sizeof prev->b);
}

void mm_block_hash_token(mm_block_hasher *h, int32_t token) {
    uint8_t b[5] = {TAG_TOKEN};
    memcpy(b + 1, &token, sizeof token);
    crypto_generichash_update(&h->st, b, sizeof b);
}

void mm_block_hash_image_row(mm_block_hasher *h, const uint8_t key[MM_IMAGE_KEY_BYTES], int32_t row) {
    uint8_t b[1 + MM_IMAGE_KEY_BYTES + 4] = {TAG_IMAGE};
    memcpy(b + 1, key, MM_IMAGE_KEY_BYTES);
    memcpy(b + 1 + MM_IMAGE_KEY_BYTES, &row, sizeof row);
    crypto_generichash_update(&h->st, b, sizeof b);
}

void mm_block_hash_end(mm_block_hasher *h, mm_block_hash *out) {
    crypto_generichash_final(&h->st, out->b, sizeof out->b);
}
