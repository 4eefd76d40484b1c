#!/usr/bin/env python3
"""Stage 3: the frozen encoder's and the VAE's view of a pool of training images, cached
for the UNet and LLM stages (training stream indices POOL_BASE..POOL_BASE+N-1):
  --part tokens   work/tokens.pt:  records [N], tokens [N, 64, VIS_DIM] f16 (SigLIP last layer,
                  'interpolation' 9x9 -> 8x8, L2-normalised)  (needs stage 1; the LLM's input)
  --part latents  work/latents.pt: latents [N, 4, 8, 8] f32 (VAE latent means * scaling_factor)
                  (needs stage 2a; with tokens.pt, the UNet's input)"""
import argparse
import os
import time

import common
import metamorph_ref
import torch
from diffusers import AutoencoderKL
from transformers import SiglipVisionModel

POOL_BASE = 20_000_000


@torch.no_grad()
def encode_tokens(vis, x):
    return metamorph_ref.vision_tower(vis, x, common.N_TOK, select_layer=-1, normalize=True)[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part", choices=["tokens", "latents"], required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    log = common.Log("features")
    t0 = time.time()
    recs, out = [], []
    if a.part == "tokens":
        vis = SiglipVisionModel.from_pretrained(os.path.join(common.ASSET, "vision")).eval()
    else:
        vae = AutoencoderKL.from_pretrained(os.path.join(common.ASSET, "decoder", "vae")).eval()
    B = 256
    for s in range(0, a.n, B):
        r, imgs = common.train_batch(POOL_BASE + s, min(B, a.n - s))
        recs += r
        if a.part == "tokens":
            out.append(encode_tokens(vis, common.pixels(imgs)).half())
        else:
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            with torch.no_grad():
                out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
        log(f"{a.part} {s + len(r)}/{a.n} t {time.time() - t0:.0f}s")
    out = torch.cat(out)
    if a.part == "tokens":
        common.save_ckpt(os.path.join(common.WORK, "tokens.pt"), records=recs, tokens=out)
    else:
        common.save_ckpt(os.path.join(common.WORK, "latents.pt"), latents=out)
    log(f"done: {a.part} of {a.n} images in {time.time() - t0:.0f}s; std {out.float().std():.3f}")


if __name__ == "__main__":
    main()
