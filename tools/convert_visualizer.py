#!/usr/bin/env python3
"""Converts MetaMorph's visualizer release (unet_checkpoint.pt, adapter_checkpoint.pt,
model_config.json, as inference/load_visualization.py downloads them) plus a Stable
Diffusion 1.5 diffusers directory into the decoder/ layout mm-decode loads:

  OUT/unet/      config.json (SD 1.5's) + diffusion_pytorch_model.safetensors (fine-tuned)
  OUT/vae/       copied from SD 1.5 (config.json + safetensors)
  OUT/scheduler/ copied from SD 1.5 (scheduler_config.json)
  OUT/adapter/   config.json (model_config.json's fields) + model.safetensors

    python tools/convert_visualizer.py --visualizer DIR_WITH_PT_FILES \
        --sd stable-diffusion-v1-5 --out MODEL/decoder [--dtype f16|f32|bf16]

Needs torch and safetensors only (no diffusers). The .pt files are pickles: load only
files you trust. Weight names stay exactly as the checkpoints write them (a DDP
"module." prefix is stripped). Also importable: the adapter module and its writer are
used by tools/reference/make_decoder_goldens.py.
"""

import argparse
import json
import os
import shutil
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ADAPTER_FIELDS = ("input_dim", "hidden_dim", "output_dim", "num_tokens", "num_layers", "num_heads", "mode")
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


class SimplifiedSigLIPProjector(nn.Module):
    """MetaMorph's adapter in its 'mlp' mode (the only one the C side loads):
    max(num_layers, 2) Linear layers, each followed by a LayerNorm, ReLU between them.
    Parameter names match the original: layers.N.{weight,bias}, norms.N.{weight,bias}."""

    def __init__(self, input_dim=1152, hidden_dim=4096, output_dim=768, num_tokens=77, num_layers=6,
                 num_heads=8, mode="mlp"):
        super().__init__()
        if mode != "mlp":
            raise ValueError(f"adapter mode '{mode}' is not supported (only 'mlp')")
        self.config = dict(input_dim=input_dim, hidden_dim=hidden_dim, output_dim=output_dim,
                           num_tokens=num_tokens, num_layers=num_layers, num_heads=num_heads, mode=mode)
        n = max(num_layers, 2)
        dims = [input_dim] + [hidden_dim] * (n - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(n))
        self.norms = nn.ModuleList(nn.LayerNorm(dims[i + 1]) for i in range(n))

    def forward(self, x):
        for i, (lin, norm) in enumerate(zip(self.layers, self.norms)):
            x = norm(lin(x))
            if i + 1 < len(self.layers):
                x = F.relu(x)
        return x


def save_safetensors(state, path, dtype=None):
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = {}
    for k, v in state.items():
        v = v.detach().contiguous()
        out[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    save_file(out, path, metadata={"format": "pt"})


def save_adapter(model, out_dir, dtype=None):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.config, f, indent=2)
        f.write("\n")
    save_safetensors(model.state_dict(), os.path.join(out_dir, "model.safetensors"), dtype)


def strip_module(state):
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_state(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return strip_module(ckpt["model_state_dict"] if "model_state_dict" in ckpt else ckpt)


def copy_part(sd_dir, out_dir, part):
    src = os.path.join(sd_dir, part)
    if not os.path.isdir(src):
        sys.exit(f"convert_visualizer: {src} is missing (expected a diffusers Stable Diffusion 1.5 directory)")
    dst = os.path.join(out_dir, part)
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name.endswith(".json") or name.endswith(".safetensors"):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--visualizer", required=True, help="directory with unet_checkpoint.pt, adapter_checkpoint.pt, model_config.json")
    ap.add_argument("--sd", required=True, help="Stable Diffusion 1.5 in the diffusers layout (unet/, vae/, scheduler/)")
    ap.add_argument("--out", required=True, help="output decoder directory")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f16", help="dtype of the written UNet and adapter")
    a = ap.parse_args()
    dtype = DTYPES[a.dtype]

    with open(os.path.join(a.visualizer, "model_config.json")) as f:
        cfg = json.load(f)
    cfg = {k: cfg[k] for k in ADAPTER_FIELDS if k in cfg}
    adapter = SimplifiedSigLIPProjector(**cfg)
    adapter.load_state_dict(load_state(os.path.join(a.visualizer, "adapter_checkpoint.pt")))
    save_adapter(adapter, os.path.join(a.out, "adapter"), dtype)

    unet_state = load_state(os.path.join(a.visualizer, "unet_checkpoint.pt"))
    os.makedirs(os.path.join(a.out, "unet"), exist_ok=True)
    shutil.copy2(os.path.join(a.sd, "unet", "config.json"), os.path.join(a.out, "unet", "config.json"))
    save_safetensors(unet_state, os.path.join(a.out, "unet", "diffusion_pytorch_model.safetensors"), dtype)
    copy_part(a.sd, a.out, "vae")
    copy_part(a.sd, a.out, "scheduler")
    print(f"convert_visualizer: wrote {a.out} (adapter {cfg}, {len(unet_state)} UNet tensors, {a.dtype})")


if __name__ == "__main__":
    main()
