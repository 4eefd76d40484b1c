/* The one way to load MetaMorph's vision tower: SigLIP as the checkpoint's config names
 * it. Every entry point that turns images into visual tokens (mm-run --image, the
 * encoder pool's mm-encoder, tests) loads it here, so none can forget a config field:
 * mm_vision_select_layer picks the hidden state (default -2, as the reference's
 * SiglipVisionTower), mm_vision_select_feature is validated, num_image_tokens gives the
 * token count and mm_hidden_size must equal SigLIP's width. Wiring of siglip.c and
 * metamorph.c's config; no maths here. */
#ifndef MM_VISION_TOWER_H
#define MM_VISION_TOWER_H

#include <stdint.h>

#include "siglip.h"

#define MM_VISION_DEFAULT_TOKENS 64 /* MetaMorph's num_image_tokens, for a bare SigLIP directory */

typedef struct {
    mm_siglip *sig;   /* features from hidden_states[select_layer] */
    int32_t n_tokens; /* visual tokens per image (num_image_tokens) */
    int32_t select_layer;
} mm_vision_tower;

/* dir: a model root (metamorph.json: its vision/ part, configured by its MetaMorph llm/)
 * or a SigLIP directory given alone (the last hidden state, 64 tokens: what a SigLIP
 * checkpoint without a MetaMorph config means). */
mm_status mm_vision_tower_load(const char *dir, mm_backend *be, mm_vision_tower *out);
void mm_vision_tower_free(mm_vision_tower *vt);

#endif
