#!/usr/bin/env python3
"""A MetaMorph model directory with a larger random LLM for benchmarks: the tiny model's
SigLIP, decoder and tokenizer (assets/tiny), with an LLM of other shapes (default: the 110m
preset, llama2.c stories110M) plus its mm_projector and vision_head, random N(0, 0.02)
weights, norms 1. Workloads whose cost should be the LLM's (e.g. prefix caching on a
captioning job: the tiny LLM's prefill is too cheap to show) run on it. Needs torch and
safetensors (a benchmark helper, as llm_torch.py; never a golden file).
Usage: make_mm_model.py --out DIR [--base assets/tiny] [--hidden 768] [--layers 12]
       [--heads 12] [--intermediate 2048] [--dtype bf16|f32] [--seed 0]"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--base", default=os.path.join(os.path.dirname(__file__), "..", "assets", "tiny"))
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    shutil.copytree(a.base, a.out, ignore=shutil.ignore_patterns("*.safetensors", "model.safetensors.index.json"))
    for part in ("vision", "decoder"):  # their weights as they are
        src = os.path.join(a.base, part)
        for root, _, files in os.walk(src):
            for f in files:
                dst = os.path.join(a.out, part, os.path.relpath(os.path.join(root, f), src))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(os.path.join(root, f), dst)
    cfg_path = os.path.join(a.out, "llm", "config.json")
    cfg = json.load(open(cfg_path))
    head_dim = a.hidden // a.heads
    cfg.update(hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
               num_key_value_heads=a.heads, head_dim=head_dim, intermediate_size=a.intermediate)
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    D, V, H, M = a.hidden, cfg["vocab_size"], a.intermediate, cfg["mm_hidden_size"]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    g = torch.Generator().manual_seed(a.seed)
    rand = lambda *shape: (0.02 * torch.randn(*shape, generator=g)).to(dtype)  # noqa: E731
    ones = lambda n: torch.ones(n, dtype=dtype)  # noqa: E731
    sd = {"model.embed_tokens.weight": rand(V, D), "model.norm.weight": ones(D), "lm_head.weight": rand(V, D)}
    for i in range(a.layers):
        p = "model.layers.%d." % i
        sd.update({p + "input_layernorm.weight": ones(D), p + "post_attention_layernorm.weight": ones(D),
                   p + "self_attn.q_proj.weight": rand(D, D), p + "self_attn.k_proj.weight": rand(D, D),
                   p + "self_attn.v_proj.weight": rand(D, D), p + "self_attn.o_proj.weight": rand(D, D),
                   p + "mlp.gate_proj.weight": rand(H, D), p + "mlp.up_proj.weight": rand(H, D),
                   p + "mlp.down_proj.weight": rand(D, H)})
    sd.update({"model.mm_projector.0.weight": rand(D, M), "model.mm_projector.0.bias": rand(D),
               "model.mm_projector.2.weight": rand(D, D), "model.mm_projector.2.bias": rand(D),
               "vision_head.0.weight": rand(D, D), "vision_head.0.bias": rand(D),
               "vision_head.2.weight": rand(M, D), "vision_head.2.bias": rand(M)})
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(a.out, "llm", "model.safetensors"),
              metadata={"format": "pt"})
    print("make_mm_model: %s: LLM %d layers x %d, vocab %d, %s" % (a.out, a.layers, a.hidden, V, a.dtype))


if __name__ == "__main__":
    main()
