/* See durable_file.h. Every system call is checked; messages name the file. */
#include "durable_file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static mm_status write_fully(int fd, const void *data, size_t n, const char *path) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return MM_ERROR(MM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        p += w, n -= (size_t)w;
    }
    return MM_OK;
}

mm_status durable_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return MM_ERROR(MM_ERR_IO, "cannot open directory %s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    return rc ? MM_ERROR(MM_ERR_IO, "cannot fsync directory %s: %s", dir, strerror(err)) : MM_OK;
}

mm_status durable_file_open(durable_file *f, const char *dir, const char *name) {
    f->fd = -1;
    if (!name[0] || strchr(name, '/') || strlen(name) >= sizeof f->name || strlen(dir) >= sizeof f->dir)
        return MM_ERROR(MM_ERR_INVALID, "bad file name \"%s\" in %s", name, dir);
    snprintf(f->dir, sizeof f->dir, "%s", dir);
    snprintf(f->name, sizeof f->name, "%s", name);
    snprintf(f->tmp_path, sizeof f->tmp_path, "%s/" DURABLE_TMP_PREFIX "%s", dir, name);
    f->fd = open(f->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) return MM_ERROR(MM_ERR_IO, "cannot create %s: %s", f->tmp_path, strerror(errno));
    return MM_OK;
}

mm_status durable_file_write(durable_file *f, const void *data, size_t n) {
    return write_fully(f->fd, data, n, f->tmp_path);
}

void durable_file_abort(durable_file *f) {
    if (f->fd < 0) return;
    close(f->fd);
    f->fd = -1;
    unlink(f->tmp_path);
}

mm_status durable_file_commit(durable_file *f) {
    char final_path[sizeof f->dir + sizeof f->name + 1];
    snprintf(final_path, sizeof final_path, "%s/%s", f->dir, f->name);
    if (fsync(f->fd)) {
        mm_status s = MM_ERROR(MM_ERR_IO, "cannot fsync %s: %s", f->tmp_path, strerror(errno));
        durable_file_abort(f);
        return s;
    }
    int rc = close(f->fd);
    f->fd = -1;
    if (rc || rename(f->tmp_path, final_path)) {
        mm_status s = MM_ERROR(MM_ERR_IO, "cannot close or rename %s to %s: %s", f->tmp_path, final_path, strerror(errno));
        unlink(f->tmp_path);
        return s;
    }
    return durable_fsync_dir(f->dir);
}

mm_status durable_file_write_all(const char *dir, const char *name, const void *data, size_t n) {
    durable_file f;
    CHECK(durable_file_open(&f, dir, name));
    mm_status s = durable_file_write(&f, data, n);
    if (s != MM_OK) {
        durable_file_abort(&f);
        return s;
    }
    return durable_file_commit(&f);
}

mm_status durable_remove_temporaries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return MM_ERROR(MM_ERR_IO, "cannot open directory %s: %s", dir, strerror(errno));
    mm_status s = MM_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, DURABLE_TMP_PREFIX, strlen(DURABLE_TMP_PREFIX))) continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) && errno != ENOENT) s = MM_ERROR(MM_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    }
    closedir(d);
    return s;
}
