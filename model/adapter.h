/* MetaMorph's visual-token adapter (SimplifiedSigLIPProjector in 'mlp' mode, from
 * facebookresearch/metamorph inference/adapter.py): max(num_layers, 2) Linear layers,
 * each followed by a LayerNorm (eps 1e-5), ReLU between them:
 *   Linear(input_dim, H) -> LN -> ReLU -> [Linear(H, H) -> LN -> ReLU]* -> Linear(H, out) -> LN.
 * Loaded from adapter/config.json (input_dim, hidden_dim, output_dim, num_layers, mode)
 * and adapter/model.safetensors (layers.N.{weight,bias}, norms.N.{weight,bias}). The
 * output is zero-padded to 77 tokens: the UNet's encoder_hidden_states. Maths only. */
#ifndef MM_ADAPTER_H
#define MM_ADAPTER_H

#include "diffusion_blocks.h"

#define MM_ADAPTER_CONTEXT_TOKENS 77 /* SD's CLIP text length the UNet was trained with */

typedef struct {
    int32_t input_dim, hidden_dim, output_dim, num_layers;
} mm_adapter_config;

typedef struct {
    mm_adapter_config cfg;
    mm_backend *be;
    mm_safetensors *st;
    mm_dn_loader loader;
    mm_arena arena;
    int n_linear;
    mm_dn_linear *layers; /* [n_linear] */
    mm_dn_norm *norms;    /* [n_linear] */
} mm_adapter;

mm_status mm_adapter_config_load(const char *dir, mm_adapter_config *cfg);
/* dir: the adapter/ folder (config.json + model.safetensors). */
mm_status mm_adapter_load(const char *dir, mm_backend *be, mm_adapter **out);
void mm_adapter_free(mm_adapter *a);

/* ctx[77, output_dim] = [adapter(tokens[n, input_dim]); zeros] with 1 <= n <= 77 (backend memory). */
mm_status mm_adapter_forward(mm_adapter *a, const float *tokens, int64_t n, float *ctx);

#endif
