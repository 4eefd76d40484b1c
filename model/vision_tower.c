/* See vision_tower.h. Must not compute anything: it only decides which SigLIP, which
 * hidden state and how many tokens, from the model's own files. */
#include "vision_tower.h"

#include <stdio.h>
#include <string.h>

#include "manifest.h"
#include "metamorph.h"
#include "tokenizer.h"

/* The MetaMorph fields of dir's llm/ config when dir is a model root with a MetaMorph
 * LLM; *found = 0 for anything else (a SigLIP directory given directly). */
static mm_status metamorph_config(const char *dir, mm_metamorph_config *mc, int *found, char *llm, size_t cap) {
    memset(mc, 0, sizeof *mc);
    *found = 0;
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/metamorph.json", dir);
    FILE *f = fopen(probe, "r");
    if (!f) return MM_OK;
    fclose(f);
    mm_model_paths paths;
    CHECK(mm_model_paths_resolve(dir, &paths));
    if (!mm_metamorph_is_checkpoint(paths.llm)) return MM_OK;
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", paths.llm);
    mm_tokenizer *tok;
    CHECK(mm_tokenizer_load(tok_path, &tok));
    mm_status s = mm_metamorph_config_load(paths.llm, tok, mc);
    mm_tokenizer_free(tok);
    snprintf(llm, cap, "%s", paths.llm);
    *found = s == MM_OK;
    return s;
}

mm_status mm_vision_tower_load(const char *dir, mm_backend *be, mm_vision_tower *out) {
    memset(out, 0, sizeof *out);
    char vision[4096], llm[4096] = "";
    mm_metamorph_config mc;
    int found;
    CHECK(mm_model_part_dir(dir, "vision", vision, sizeof vision));
    CHECK(metamorph_config(dir, &mc, &found, llm, sizeof llm));
    out->n_tokens = found ? mc.n_image_tokens : MM_VISION_DEFAULT_TOKENS;
    out->select_layer = found ? mc.vision_select_layer : -1;
    CHECK(mm_siglip_load(vision, be, &out->sig));
    mm_status s = mm_siglip_select_layer(out->sig, out->select_layer);
    if (s != MM_OK && found)
        s = MM_ERROR(MM_ERR_FORMAT, "%s/config.json: key 'mm_vision_select_layer' = %d, but %s has hidden states "
                     "[-%d, %d]", llm, out->select_layer, vision, out->sig->cfg.n_layers + 1, out->sig->cfg.n_layers);
    if (s == MM_OK && found && mc.mm_hidden != out->sig->cfg.hidden)
        s = MM_ERROR(MM_ERR_FORMAT, "%s/config.json: key 'mm_hidden_size' = %d, but the SigLIP in %s has hidden_size %d",
                     llm, mc.mm_hidden, vision, out->sig->cfg.hidden);
    if (s != MM_OK) mm_vision_tower_free(out);
    return s;
}

void mm_vision_tower_free(mm_vision_tower *vt) {
    mm_siglip_free(vt->sig);
    memset(vt, 0, sizeof *vt);
}
