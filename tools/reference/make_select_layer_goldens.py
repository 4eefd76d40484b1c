#!/usr/bin/env python3
"""End-to-end goldens for MetaMorph's mm_vision_select_layer and image markers.

The reference's SiglipVisionTower.feature_select takes
image_forward_outs.hidden_states[mm_vision_select_layer] (MetaMorph's default -2). The
embedded tiny SigLIP has 2 layers, where -2 and 1 name the same hidden state, so these
goldens use a 4-layer SigLIP of the same widths (hidden states 0..4, seed 17): select
layer -2 (hidden state 3) and 1 (an early positive layer). The LLM is assets/tiny/llm
(from make_tiny_model.py) with only mm_vision_select_layer changed; the C tests build
that model root from links to assets/tiny/llm and to the vision directory written here.

Writes
  tests/golden/select_layer/vision/      SiglipVisionModel + SiglipImageProcessor, 4 layers
  tests/golden/select_layer/golden.jsonl one line per (select_layer, case): messages,
      images (under tests/golden/vision/), prompt_ids, max_new_tokens (= positions),
      greedy_ids, n_positions, min_top2_gap, and last_layer_ids: the greedy ids with
      select layer -1, which differ (checked here), so a path that ignores the config
      fails the test
  tests/golden/select_layer/markers.jsonl prompts whose text holds "<image>" or
      "<image_start><image_end>": the ids of tokenizer_image_token (only "<image>" is a
      placeholder there)
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import make_tiny_model  # noqa: E402
import make_tiny_vision  # noqa: E402
import metamorph_ref  # noqa: E402
import metamorph_template  # noqa: E402
import refutil  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

OUT = os.path.join(ROOT, "tests", "golden", "select_layer")
GOLD_VISION = os.path.join(ROOT, "tests", "golden", "vision")
LAYERS = (-2, 1)
N_LAYERS = 4
N_NEW = 16  # generated positions
CASES = [
    {"messages": [{"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": "What is in this picture?"}]}],
     "images": ["images/rgb_300x211.png"]},
    {"messages": [{"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": "Describe the colours."}]}],
     "images": ["images/baseline_45x33.jpg"]},
]
MARKER_TEXTS = [
    "<image_start><image_end> no image here",
    "Look at <image> and tell me.",
    "Two: <image><image>\n<image_start><image><image_end>",
]


def main():
    refutil.deterministic(0)
    siglip, proc = make_tiny_vision.save_siglip(make_tiny_vision.build_siglip(N_LAYERS, seed=17),
                                                os.path.join(OUT, "vision"))
    tok = AutoTokenizer.from_pretrained(make_tiny_model.LLM)
    cfg = make_tiny_model.make_config(tok)
    cfg._attn_implementation = "eager"
    ref = make_tiny_model.load_metamorph(cfg)
    start_id = tok.convert_tokens_to_ids(metamorph_template.IM_START)
    end_id = tok.convert_tokens_to_ids(metamorph_template.IM_END)
    eos = set(cfg.eos_token_id)

    def run(case, layer):
        toks = []
        for f in case["images"]:
            rgb = Image.open(os.path.join(GOLD_VISION, f)).convert("RGB")
            pix = proc(images=rgb, return_tensors="pt")["pixel_values"]
            _, t = metamorph_ref.vision_tower(siglip, pix, make_tiny_model.N_IMAGE_TOKENS, select_layer=layer)
            toks.append(t[0])
        msgs = metamorph_template.render_image_parts(case["messages"])
        prompt = metamorph_template.get_prompt_llama3(msgs, add_generation_prompt=True)
        ids = metamorph_template.tokenizer_image_token(prompt, tok)
        with torch.no_grad():
            emb = ref.embed_prompt(ids, toks)
            # the reference loop makes max_new_tokens + 1 positions: ask for N_NEW - 1
            r = ref.greedy_decode(emb, start_id, end_id, eos, N_NEW - 1, start_in_image_mode=False)
        assert min(r["gaps"]) >= make_tiny_model.MIN_GAP and not r["quirks"] and not r["partial_image"], r
        return ids, r

    rows = []
    for case in CASES:
        _, last = run(case, -1)
        for layer in LAYERS:
            ids, r = run(case, layer)
            assert r["ids"] != last["ids"], f"select layer {layer} gives the last layer's answer"
            rows.append({"select_layer": layer, "messages": case["messages"], "images": case["images"],
                         "prompt_ids": ids, "max_new_tokens": N_NEW, "greedy_ids": r["ids"],
                         "n_positions": r["positions"], "min_top2_gap": min(r["gaps"]),
                         "last_layer_ids": last["ids"]})
            print(f"select {layer}: gap {min(r['gaps']):.4f}", r["ids"][:8], "last layer", last["ids"][:8])
    refutil.write_jsonl(os.path.join(OUT, "golden.jsonl"), rows)

    markers = []
    for text in MARKER_TEXTS:
        msgs = [{"role": "user", "content": text}]
        prompt = metamorph_template.get_prompt_llama3(msgs, add_generation_prompt=True)
        ids = metamorph_template.tokenizer_image_token(prompt, tok)
        markers.append({"messages": msgs, "prompt_ids": ids,
                        "n_placeholders": ids.count(metamorph_template.IMAGE_TOKEN_INDEX)})
    refutil.write_jsonl(os.path.join(OUT, "markers.jsonl"), markers)


if __name__ == "__main__":
    main()
