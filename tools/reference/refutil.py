"""Shared helpers for the reference generators: deterministic set-up, weight
initialisation, greedy decoding with top-1/top-2 gaps, file writing."""

import json
import os
import random

import numpy as np
import torch


def deterministic(seed=0):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # fixed reduction order on CPU


def init_llama_(model, seed, std, norm_std=0.1, embed_std=None):
    """Overwrite every parameter in name order from one generator:
    Linear/Embedding weights ~ N(0, std) (embed_std for embed_tokens),
    RMSNorm weights ~ 1 + N(0, norm_std) so that the norm weights matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + norm_std * torch.randn(p.shape, generator=g, dtype=torch.float32))
            elif "embed_tokens" in name and embed_std is not None:
                p.copy_(embed_std * torch.randn(p.shape, generator=g, dtype=torch.float32))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=torch.float32))


@torch.no_grad()
def forward_logits(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, use_cache=False).logits[0]


@torch.no_grad()
def greedy(model, prompt, n_new, eos_ids=()):
    """Full recomputation at every step (no KV cache): the plainest reference.
    Returns (new_ids, gaps, stop_reason) where gaps[i] = top1 - top2 logit at step i."""
    ids = list(prompt)
    new, gaps = [], []
    for _ in range(n_new):
        last = forward_logits(model, ids)[-1].double()
        top = torch.topk(last, 2)
        tok = int(top.indices[0])
        gaps.append(float(top.values[0] - top.values[1]))
        new.append(tok)
        ids.append(tok)
        if tok in eos_ids:
            return new, gaps, "eos"
    return new, gaps, "length"


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
