/* The lines of an mmctl batch job: a JSONL file (one request per line) or a directory
 * of images to caption, parsed and checked up front into batch_items. A line that
 * cannot run (bad JSON, no id, duplicate id, a bad field) is still an item: its
 * error is recorded as that line's result, and the job goes on.
 * Reads no image bytes (batch_request.c does, when the line runs). */
#ifndef MM_BATCH_INPUT_H
#define MM_BATCH_INPUT_H

#include <jansson.h>
#include <stddef.h>

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
    char **image_paths;       /* [n_images], resolved (relative to the input file's directory) */
    size_t n_images;
    Metamorph__V1__SamplingParams sampling; /* stop strings unused */
    Metamorph__V1__ImageParams image;       /* image.sampler points at sampler when set */
    char *sampler;
} batch_item;

typedef struct {
    batch_item *items; /* [n], in input order */
    size_t n;
} batch_input;

typedef struct {
    batch_task task;        /* when a line does not say */
    const json_t *defaults; /* object of fields every line starts from (a line's own win), or NULL */
} batch_input_options;

/* Every non-blank line of path. Errors only for the file itself (cannot read it). */
mm_status batch_input_load_jsonl(const char *path, const batch_input_options *o, batch_input *out);
/* One caption line per PNG/JPEG file of dir (by extension, sorted by name), id = file
 * name, with prompt. */
mm_status batch_input_load_image_dir(const char *dir, const char *prompt, const batch_input_options *o,
                                     batch_input *out);
void batch_input_free(batch_input *in);

const char *batch_task_name(batch_task t);
/* "caption" | "generate" | "chat" -> 0, else -1. */
int batch_task_parse(const char *name, batch_task *t);

#endif
