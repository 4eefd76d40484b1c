/* Read-only access to safetensors checkpoints through mmap: one file, or a directory
 * holding model.safetensors or a sharded model.safetensors.index.json (shards are
 * mapped lazily, on the first lookup of a tensor they hold, so a pipeline stage
 * touches only its own files and pages). Every header is validated strictly:
 * header length within the file, JSON well-formed, dtype known, shape x dtype size
 * equal to the byte range, the ranges tiling the data section exactly (no overlap, no
 * gap, no bytes after the last tensor: what the safetensors library accepts), index
 * entries inside the index's directory. Errors name the file and the tensor. Also a small writer for tools/tests. */
#ifndef MM_SAFETENSORS_H
#define MM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "status.h"

#define MM_MAX_DIMS 8

typedef struct {
    const char *name;
    const char *file;      /* path of the file that holds it (for messages) */
    mm_dtype dtype;
    int ndim;
    int64_t shape[MM_MAX_DIMS];
    int64_t numel;
    const void *data;      /* points into the read-only mapping */
    size_t nbytes;
} mm_st_tensor;

typedef struct mm_safetensors mm_safetensors;

/* path: a .safetensors file, an index .json, or a directory containing either
 * model.safetensors.index.json or model.safetensors. */
mm_status mm_safetensors_open(const char *path, mm_safetensors **out);
void mm_safetensors_close(mm_safetensors *st);

/* NULL when absent (no error recorded). May map a shard: returns NULL and records an
 * error if that shard is malformed; use mm_safetensors_get to tell the two apart. */
const mm_st_tensor *mm_safetensors_find(mm_safetensors *st, const char *name);

/* Looks a tensor up and checks its rank and shape (shape entries < 0 match anything).
 * Errors: MM_ERR_NOT_FOUND "<file>: tensor '<name>' not found", MM_ERR_FORMAT for a
 * wrong shape or a malformed shard, each naming file and tensor. */
mm_status mm_safetensors_get(mm_safetensors *st, const char *name, int ndim,
                             const int64_t *shape, const mm_st_tensor **out);

/* Tensor names known to the index (or the single file), for iteration. */
size_t mm_safetensors_count(const mm_safetensors *st);
const char *mm_safetensors_name(const mm_safetensors *st, size_t i);

/* Writes one safetensors file (header keys in the given order, 8-byte aligned header). */
typedef struct {
    const char *name;
    mm_dtype dtype;
    int ndim;
    int64_t shape[MM_MAX_DIMS];
    const void *data;
} mm_st_write_tensor;

mm_status mm_safetensors_write(const char *path, const mm_st_write_tensor *tensors, size_t n);

#endif
