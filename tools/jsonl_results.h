/* DIR/results.jsonl of an mmctl batch job: one JSON object per line, appended as the
 * lines of the input finish, in any order, and safe against SIGKILL at any moment:
 *  - a record is appended with ONE write(2) (O_APPEND) of the whole line and fsync'd;
 *    a crash can only leave the last line torn (no '\n'), and opening the file
 *    truncates that tail away;
 *  - a record names its input line by "id", or by "line" when the line had no usable
 *    id ("id": null); a key may have several records (a retried line): the latest
 *    line wins;
 *  - compaction (at the end of a completed job) rewrites the file through a temporary
 *    (fsync + rename + fsync of DIR) with the latest record of each key, one per line:
 *    the input's keys in input order, then any other keys the file held.
 * One job per DIR at a time: DIR/.lock is flock'd while the file is open.
 * Writes no images (the caller does, durably, before appending the record). */
#ifndef MM_JSONL_RESULTS_H
#define MM_JSONL_RESULTS_H

#include <jansson.h>
#include <pthread.h>
#include <sys/types.h>

#include "common/status.h"

#define JSONL_RESULTS_NAME "results.jsonl"

typedef struct {
    char dir[4096];
    char path[4200];       /* dir/results.jsonl */
    int fd;                /* O_WRONLY | O_APPEND, -1 when closed */
    int lock_fd;           /* dir/.lock, flock'd */
    off_t size;            /* bytes of complete lines in the file */
    size_t n_lines;        /* complete lines */
    size_t n_unreadable;   /* complete lines that were not a JSON record with a key (ignored) */
    size_t n_torn_bytes;   /* bytes of a torn last line truncated away at open */
    json_t *latest;        /* key -> [offset of its latest line, 1 if that line is "ok"] */
    pthread_mutex_t mu;    /* appends come from many threads */
} jsonl_results;

/* Results key of an input line: "i:" + id, or "l:" + line when id is NULL (malloc'd,
 * NULL when out of memory). */
char *jsonl_results_key(const char *id, int line);

/* Creates dir if needed, locks it, repairs and indexes dir/results.jsonl.
 * MM_ERR_INVALID (nothing changed) when the file holds records and !resume, or when
 * another job holds the lock. */
mm_status jsonl_results_open(jsonl_results *r, const char *dir, int resume);
/* Status of key's latest record: 1 ok, 0 error, -1 none. Not while appends run. */
int jsonl_results_latest(jsonl_results *r, const char *key);
/* Appends the record (it must have "id" or "line", and "status") as one line, fsync'd.
 * Thread-safe. */
mm_status jsonl_results_append(jsonl_results *r, const json_t *record);
/* Rewrites the file as described above; keys: the input's, in order. Only
 * jsonl_results_close may follow. */
mm_status jsonl_results_compact(jsonl_results *r, char *const *keys, size_t n_keys);
void jsonl_results_close(jsonl_results *r);

#endif
