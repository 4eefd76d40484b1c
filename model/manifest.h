/* The model directory layout of DESIGN.md section 5: a root with metamorph.json naming
 * its parts (llm/, vision/, decoder/), or, for convenience, an HF LLaMA directory given
 * directly (config.json + safetensors + tokenizer.json). */
#ifndef MM_MANIFEST_H
#define MM_MANIFEST_H

#include <stddef.h>

#include "common/status.h"

typedef struct {
    char llm[4096];     /* HF LLaMA directory */
    char vision[4096];  /* HF SigLIP directory, "" if none */
    char decoder[4096]; /* diffusers decoder directory, "" if none */
} mm_model_paths;

mm_status mm_model_paths_resolve(const char *dir, mm_model_paths *out);

/* The directory of one part ("vision" or "decoder") for a tool given DIR: the part
 * the manifest names when DIR/metamorph.json exists (NOT_FOUND when it names none),
 * otherwise DIR itself (the part's own directory). */
mm_status mm_model_part_dir(const char *dir, const char *part, char *out, size_t cap);

#endif
