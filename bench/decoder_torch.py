#!/usr/bin/env python3
"""One UNet call of Stable Diffusion 1.5 in diffusers on the CPU (random weights,
64x64 latents, batch 2, 77x768 context), for bench/decoder_cpu's ratio. Prints the best
of --runs calls in seconds, or exits non-zero when torch/diffusers are missing."""
import argparse
import sys
import time

try:
    import torch
    from diffusers import UNet2DConditionModel
except ImportError:
    sys.exit(1)

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--runs", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
unet = UNet2DConditionModel(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8).eval()
x, ctx, t = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768), torch.tensor(981)
best = float("inf")
with torch.no_grad():
    unet(x, t, encoder_hidden_states=ctx)  # warm-up
    for _ in range(a.runs):
        t0 = time.perf_counter()
        unet(x, t, encoder_hidden_states=ctx)
        best = min(best, time.perf_counter() - t0)
print(f"{best:.3f}")
