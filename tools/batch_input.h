/* The lines of an mmctl batch job: a JSONL file (one request per line) or a directory
 * of images to caption, parsed and checked up front into batch_items. A line that
 * cannot run (bad JSON, no id, duplicate id, a bad field) is still an item: its
 * error is recorded as that line's result, and the job goes on.
 * Reads no image files (batch_request.c does, when the line runs); a tar shard's
 * members are read here, one shard at a time. */
#ifndef MM_BATCH_INPUT_H
#define MM_BATCH_INPUT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "proto/metamorph.pb-c.h"

/* caption: prompt + at least one image, text answer; generate: the answer starts with
 * <image_start>; chat: text answer, images optional. */
typedef enum { BATCH_TASK_CHAT = 0, BATCH_TASK_CAPTION, BATCH_TASK_GENERATE } batch_task;

typedef struct {
    int line;                 /* 1-based line of the input (--images: file index + 1) */
    char *id;                 /* NULL when the line has no usable id (it is keyed by line) */
    char *key;                /* results key, jsonl_results_key(id, line) */
    char *error;              /* NULL: the line can run; else why not (its recorded result) */
    batch_task task;
    char *prompt;
    char **image_paths;       /* [n_images], resolved (relative to the input file's directory);
                               * a shard member is "SHARD.tar#MEMBER" */
    size_t n_images;
    uint8_t *image_data;      /* a shard member's bytes (then n_images is 1), else NULL: read the file */
    size_t image_len;
    Metamorph__V1__SamplingParams sampling; /* stop strings unused */
    Metamorph__V1__ImageParams image;       /* image.sampler points at sampler when set */
    char *sampler;
} batch_item;

#define BATCH_SKIPPED_SHOWN 5

typedef struct {
    batch_item *items; /* [n], in input order */
    size_t n;
    size_t n_skipped;  /* --images / shards: files that are not PNG/JPEG, left out */
    char *skipped[BATCH_SKIPPED_SHOWN]; /* the first of them (relative paths) */
} batch_input;

typedef struct {
    batch_task task;        /* when a line does not say */
    const json_t *defaults; /* object of fields every line starts from (a line's own win), or NULL */
} batch_input_options;

/* Every non-blank line of path. Errors only for the file itself (cannot read it). */
mm_status batch_input_load_jsonl(const char *path, const batch_input_options *o, batch_input *out);
/* One caption line per PNG/JPEG file under dir, subdirectories included (by extension,
 * sorted by relative path), id = the path relative to dir, with prompt. Other files are
 * counted in out->n_skipped; hidden files and directories are not visited. */
mm_status batch_input_load_image_dir(const char *dir, const char *prompt, const batch_input_options *o,
                                     batch_input *out);
/* A WebDataset-style tar shard: one caption line per PNG/JPEG member (its bytes held in
 * the item), id = the sample key (the member path up to the first '.' of its name, as
 * WebDataset groups files), source "SHARD#MEMBER". Other members (.txt, .json, ...) are
 * counted in out->n_skipped. Errors only for the archive itself (a key twice is a
 * line error, as a duplicate id). */
mm_status batch_input_load_shard(const char *tar_path, const char *prompt, const batch_input_options *o,
                                 batch_input *out);
void batch_input_free(batch_input *in);

/* For the loaders of other layouts (batch_shard.c): is name a PNG/JPEG by its
 * extension; count (and keep the first few of) the files left out; append the caption
 * line {"id": id, "prompt": prompt, "images": [path]} (an item with an error when it
 * cannot run; *it points at it); and, after the last line, check ids and set keys. */
int batch_input_is_image_name(const char *name);
void batch_input_note_skipped(batch_input *in, const char *name);
mm_status batch_input_add_image(batch_input *in, size_t *cap, const char *id, const char *path, const char *prompt,
                                const batch_input_options *o, batch_item **it);
mm_status batch_input_finish(batch_input *in);

const char *batch_task_name(batch_task t);
/* "caption" | "generate" | "chat" -> 0, else -1. */
int batch_task_parse(const char *name, batch_task *t);

#endif
