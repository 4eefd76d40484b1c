/* WebDataset-style tar shards for mmctl batch: the shard list of a pattern such as
 * 'data-{000..099}.tar' (brace ranges expanded here, as the shell would unquoted) and
 * the caption lines of one shard (libarchive reads plain, gzip'd, zstd'd tars).
 * Sends nothing; one shard's image bytes are held in memory while it runs. */
#ifndef MM_BATCH_SHARD_H
#define MM_BATCH_SHARD_H

#include <stddef.h>

#include "common/status.h"

/* *paths (malloc'd, free with batch_shards_free): pattern with every {A..B} range
 * (decimal, A <= B, zero-padded to A's width as in '{000..099}') expanded, in order;
 * a pattern without a range is itself. At most 1000000 shards. */
mm_status batch_shards_expand(const char *pattern, char ***paths, size_t *n);
void batch_shards_free(char **paths, size_t n);
/* Where a shard's results go: SHARD without .tar (or .tar.gz, .tgz, .tar.zst) + ".results". */
void batch_shard_results_dir(const char *shard, char *out, size_t cap);

#endif
