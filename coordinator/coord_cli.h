/* mm-coordinator's command-line forms other than serving (`--help`, `--print-config`,
 * `--config-reference`, `--check`) and the model check the serving form shares with
 * `--check`. They run before MPI starts, so an operator (or deploy/launch.sh) can ask
 * without mpiexec. Must not serve, bind ports or start MPI. */
#ifndef MM_COORD_CLI_H
#define MM_COORD_CLI_H

#include "model/llama.h"
#include "model/manifest.h"
#include "model/metamorph.h"
#include "model/tokenizer.h"
#include "pipeline/serve_config.h"

/* What the coordinator reads of a model before serving: its parts, the LLM config, the
 * tokenizer and, for a MetaMorph checkpoint, its config (else *mm zeroed). Nothing is
 * mapped: this is the check of the model files that `--check` runs too. */
typedef struct {
    mm_model_paths paths;
    mm_llama_config llm;
    mm_tokenizer *tok;
    mm_metamorph_config mm; /* n_image_tokens = 0: not a MetaMorph model */
} mm_coord_model;

mm_status mm_coord_model_load(const mm_serve_config *cfg, mm_coord_model *m);
void mm_coord_model_free(mm_coord_model *m);

/* Handles every form but `mm-coordinator CFG` (then returns -1): returns the exit code,
 * MM_EXIT_CONFIG (common/runtime.h) when the config or the model files are wrong. */
int mm_coord_cli(int argc, char **argv);

#endif
