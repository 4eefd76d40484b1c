/* Files that appear whole or not at all, even after a SIGKILL or a power cut: the
 * bytes go to a hidden temporary name in the same directory (".tmp-NAME"), are
 * fsync'd, renamed over NAME, and the directory is fsync'd so the rename itself is
 * durable. mmctl batch writes its images and its compacted results this way.
 * Not for appends: a reader must never see a half-written NAME. */
#ifndef MM_DURABLE_FILE_H
#define MM_DURABLE_FILE_H

#include <stddef.h>

#include "common/status.h"

#define DURABLE_TMP_PREFIX ".tmp-"

typedef struct {
    int fd;              /* the temporary file, -1 when closed */
    char dir[4096];      /* directory of both names */
    char name[256];      /* final name inside dir */
    char tmp_path[4400]; /* dir/.tmp-name */
} durable_file;

/* Creates (truncating) dir/.tmp-NAME for writing. name: a plain file name. */
mm_status durable_file_open(durable_file *f, const char *dir, const char *name);
mm_status durable_file_write(durable_file *f, const void *data, size_t n);
/* fsync, close, rename to dir/name, fsync dir. The temporary is removed on failure. */
mm_status durable_file_commit(durable_file *f);
/* Closes and removes the temporary (no-op when already closed). */
void durable_file_abort(durable_file *f);

/* open + write + commit of one buffer. */
mm_status durable_file_write_all(const char *dir, const char *name, const void *data, size_t n);
/* fsync of a directory, so entries created or renamed in it survive a crash. */
mm_status durable_fsync_dir(const char *dir);
/* Removes the leftovers of interrupted writes (dir/.tmp-*). */
mm_status durable_remove_temporaries(const char *dir);

#endif
