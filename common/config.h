/* Typed access to JSON config files (HF config.json, metamorph.json) via jansson.
 * Getters distinguish "absent" (use a default) from "present with the wrong type"
 * (an error naming the file and the key). */
#ifndef MM_CONFIG_H
#define MM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct mm_json mm_json; /* an opaque jansson json_t */

/* Loads and parses a JSON file; errors name the file and the line/column. */
mm_status mm_json_load(const char *path, mm_json **out);
void mm_json_free(mm_json *j);

/* Loads DIR/NAME, runs parse(root, file, out) on it and frees the document: the shape of
 * every "read this part's config.json into a struct" function. */
typedef mm_status (*mm_json_parse_fn)(const mm_json *root, const char *file, void *out);
mm_status mm_json_load_parsed(const char *dir, const char *name, mm_json_parse_fn parse, void *out);

/* Object member lookup (NULL if absent or j is not an object). */
mm_json *mm_json_get(const mm_json *j, const char *key);
/* Is key present with a value other than null (HF's "not set")? */
int mm_json_has(const mm_json *j, const char *key);
int mm_json_is_object(const mm_json *j);

/* Number/int/bool/string getters on an object member. `file` is used in messages.
 * Absent member -> *out = def, MM_OK. Wrong type -> MM_ERR_FORMAT. */
mm_status mm_json_int(const mm_json *obj, const char *file, const char *key, int64_t def, int64_t *out);
mm_status mm_json_num(const mm_json *obj, const char *file, const char *key, double def, double *out);
mm_status mm_json_bool(const mm_json *obj, const char *file, const char *key, int def, int *out);
/* The same with a range [min, max] (mm_json_num_in: (min, max] when open_min). A
 * default outside the range makes the key required. Values are checked before any
 * narrowing, so 2^32 + 96 is refused rather than read as 96; errors are one line naming
 * the file, the key and the value. */
mm_status mm_json_int_in(const mm_json *obj, const char *file, const char *key, int64_t def, int64_t min,
                         int64_t max, int64_t *out);
mm_status mm_json_i32_in(const mm_json *obj, const char *file, const char *key, int32_t def, int32_t min,
                         int32_t max, int32_t *out);
mm_status mm_json_num_in(const mm_json *obj, const char *file, const char *key, double def, double min,
                         double max, int open_min, double *out);

/* A value as compact ASCII JSON for a message (control bytes escaped as \uXXXX, long
 * values cut with "..."); returns buf. */
#define MM_JSON_SHOWN_CAP 64
const char *mm_json_show(const mm_json *v, char *buf, size_t cap);

/* Returned pointer is owned by the document. */
mm_status mm_json_str(const mm_json *obj, const char *file, const char *key, const char *def, const char **out);

/* Reads an int or an array of ints (e.g. eos_token_id). Fills at most cap values. */
mm_status mm_json_int_list(const mm_json *obj, const char *file, const char *key, int64_t *vals,
                           int cap, int *count);
/* The same for numbers (e.g. image_mean: 0.5 or [0.5, 0.5, 0.5]). */
mm_status mm_json_num_list(const mm_json *obj, const char *file, const char *key, double *vals, int cap,
                           int *count);

#endif
