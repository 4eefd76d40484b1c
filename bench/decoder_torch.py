#!/usr/bin/env python3
"""One UNet call of Stable Diffusion 1.5 in diffusers (random weights, 64x64 latents,
batch 2, 77x768 context) on the CPU or a CUDA device, for bench/decoder_cpu's and
bench/decoder_gpu's ratios. Prints the median of --runs calls in seconds (after one
warm-up; CUDA synchronised around each), or exits non-zero when torch/diffusers (or
the device) are missing."""
import argparse
import statistics
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
ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
ap.add_argument("--dtype", default="float32", choices=("float32", "float16"))
a = ap.parse_args()
if a.device == "cuda" and not torch.cuda.is_available():
    sys.exit(1)
torch.set_num_threads(a.threads)
torch.backends.cuda.matmul.allow_tf32 = False  # f32 means f32, as in our backend
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)
dt = getattr(torch, a.dtype)
unet = UNet2DConditionModel(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
    attention_head_dim=8).eval().to(a.device, dt)
x = torch.randn(2, 4, 64, 64, device=a.device, dtype=dt)
ctx = torch.randn(2, 77, 768, device=a.device, dtype=dt)
t = torch.tensor(981, device=a.device)


def sync():
    if a.device == "cuda":
        torch.cuda.synchronize()


times = []
with torch.no_grad():
    unet(x, t, encoder_hidden_states=ctx)  # warm-up
    for _ in range(a.runs):
        sync()
        t0 = time.perf_counter()
        unet(x, t, encoder_hidden_states=ctx)
        sync()
        times.append(time.perf_counter() - t0)
print(f"{statistics.median(times):.4f}")
