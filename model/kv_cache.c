/* See kv_cache.h. */
#include "kv_cache.h"

#include <stdlib.h>
#include <string.h>

int32_t mm_kv_cache_blocks_for(int32_t n_tokens, int32_t block_size) {
    return (n_tokens + block_size - 1) / block_size;
}

mm_status mm_kv_cache_init(mm_backend *be, int32_t n_layers, int32_t n_blocks, int32_t block_size,
                           int32_t n_kv_heads, int32_t head_dim, mm_kv_cache **out) {
    return mm_kv_cache_init_typed(be, n_layers, n_blocks, block_size, n_kv_heads, head_dim, MM_DTYPE_F32, out);
}

mm_status mm_kv_cache_init_typed(mm_backend *be, int32_t n_layers, int32_t n_blocks, int32_t block_size,
                                 int32_t n_kv_heads, int32_t head_dim, mm_dtype dtype, mm_kv_cache **out) {
    if (dtype != MM_DTYPE_F32 && dtype != MM_DTYPE_BF16)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "KV cache dtype %s (F32 or BF16)", mm_dtype_name(dtype));
    if (n_layers < 0 || n_blocks <= 0 || block_size <= 0 || n_kv_heads <= 0 || head_dim <= 0)
        return MM_ERROR(MM_ERR_INVALID, "KV cache: bad geometry (%d layers, %d blocks of %d)", n_layers,
                        n_blocks, block_size);
    mm_kv_cache *c = calloc(1, sizeof *c);
    CHECK(CHECK_ALLOC(c));
    c->be = be;
    c->n_layers = n_layers, c->n_blocks = n_blocks, c->block_size = block_size;
    c->n_kv_heads = n_kv_heads, c->head_dim = head_dim, c->dtype = dtype;
    size_t layer_bytes =
        (size_t)n_blocks * (size_t)block_size * (size_t)n_kv_heads * (size_t)head_dim * mm_dtype_size(dtype);
    c->k = calloc((size_t)(n_layers ? n_layers : 1), sizeof *c->k);
    c->v = calloc((size_t)(n_layers ? n_layers : 1), sizeof *c->v);
    c->free_ids = malloc((size_t)n_blocks * sizeof *c->free_ids);
    if (!c->k || !c->v || !c->free_ids) goto nomem;
    for (int32_t l = 0; l < n_layers; l++) {
        c->k[l] = be->ops->alloc(be, layer_bytes);
        c->v[l] = be->ops->alloc(be, layer_bytes);
        if (!c->k[l] || !c->v[l]) goto nomem;
    }
    for (int32_t i = 0; i < n_blocks; i++) c->free_ids[i] = n_blocks - 1 - i; /* pop gives 0, 1, ... */
    c->n_free = n_blocks;
    *out = c;
    return MM_OK;
nomem:
    mm_kv_cache_free(c);
    return MM_ERROR(MM_ERR_NOMEM, "KV cache: %d layers x %zu bytes", n_layers, 2 * layer_bytes);
}

void mm_kv_cache_free(mm_kv_cache *c) {
    if (!c) return;
    for (int32_t l = 0; l < c->n_layers; l++) {
        if (c->k) c->be->ops->dealloc(c->be, c->k[l]);
        if (c->v) c->be->ops->dealloc(c->be, c->v[l]);
    }
    free(c->k);
    free(c->v);
    free(c->free_ids);
    free(c);
}

mm_status mm_kv_seq_reserve(mm_kv_cache *c, mm_kv_seq *seq, int32_t n_tokens) {
    int32_t need = mm_kv_cache_blocks_for(n_tokens, c->block_size);
    if (need <= seq->n_blocks) return MM_OK;
    if (need - seq->n_blocks > c->n_free)
        return MM_ERROR(MM_ERR_NOMEM, "KV cache full: need %d more blocks, %d free", need - seq->n_blocks,
                        c->n_free);
    if (need > seq->cap) {
        int32_t cap = seq->cap ? seq->cap : 8;
        while (cap < need) cap *= 2;
        int32_t *b = realloc(seq->blocks, (size_t)cap * sizeof *b);
        CHECK(CHECK_ALLOC(b));
        seq->blocks = b, seq->cap = cap;
    }
    while (seq->n_blocks < need) seq->blocks[seq->n_blocks++] = c->free_ids[--c->n_free];
    return MM_OK;
}

void mm_kv_seq_release(mm_kv_cache *c, mm_kv_seq *seq) {
    for (int32_t i = seq->n_blocks - 1; i >= 0; i--) c->free_ids[c->n_free++] = seq->blocks[i];
    free(seq->blocks);
    memset(seq, 0, sizeof *seq);
}
