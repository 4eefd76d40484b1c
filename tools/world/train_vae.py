#!/usr/bin/env python3
"""Stage 2a: the visualizer's VAE. A tiny diffusers AutoencoderKL (4 down blocks:
64x64 RGB <-> 8x8x4 latents) trained on world images (L1 + MSE reconstruction, shape pixels weighted
10x, KL weight 1e-6 as in SD). scaling_factor is set to 1/std of the latent means of 512
training images. Writes assets/world/decoder/vae/. Resumable (work/vae.pt)."""
import argparse
import os
import time

import common
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL


SHAPE_WEIGHT = 10.0


def build():
    torch.manual_seed(2)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32),
                         layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=8,
                         sample_size=64, scaling_factor=0.18215)


def to_x(imgs):
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decoder-only", action="store_true",
                    help="stage 2b: fine-tune post_quant_conv + decoder of assets/world/decoder/vae with the "
                         "encoder frozen (its latents, the UNet's training data, and scaling_factor stay as they are)")
    ap.add_argument("--save-min", type=float, default=3.0)
    ap.add_argument("--minutes", type=float, default=0, help="wall-time budget: stop then (0 = --steps only); the LR schedule follows elapsed/budget")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = os.path.join(common.ASSET, "decoder", "vae")
    if a.decoder_only:
        log = common.Log("vae_decoder")
        vae = AutoencoderKL.from_pretrained(out)
        for p in list(vae.encoder.parameters()) + list(vae.quant_conv.parameters()):
            p.requires_grad_(False)
        train_params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
        ck_path = os.path.join(common.WORK, "vae_decoder.pt")
    else:
        log = common.Log("vae")
        vae = build()
        train_params = list(vae.parameters())
        ck_path = os.path.join(common.WORK, "vae.pt")
    opt = torch.optim.AdamW(train_params, lr=a.lr, weight_decay=0.0)
    step, elapsed = 0, 0.0
    ck = common.load_ckpt(ck_path)
    if ck:
        vae.load_state_dict(ck["vae"]); opt.load_state_dict(ck["opt"]); step, elapsed = ck["step"], ck["elapsed"]
        log(f"resumed at step {step}")
    t_start, t_save, run = time.time() - elapsed, time.time(), 0.0
    base = 10_000_000   # training image indices of this stage (another slice of the train stream)
    first = True   # the running averages start from the first step of this run (also after a resume)
    while step < a.steps and not (a.minutes and time.time() - t_start > a.minutes * 60):
        _, imgs = common.train_batch(base + step * a.batch, a.batch)
        x = to_x(imgs)
        for g in opt.param_groups:
            g["lr"] = common.lr_at(step, a.steps, a.lr, time.time() - t_start, a.minutes, warmup=20)
        if a.decoder_only:
            with torch.no_grad():
                post = vae.encode(x).latent_dist
        else:
            post = vae.encode(x).latent_dist
        z = post.sample()
        y = vae.decode(z).sample
        # shape pixels (saturated colours) weigh SHAPE_WEIGHT times a grey background pixel:
        # with a plain loss the flat background dominates and colours are lost
        w = 1.0 + (SHAPE_WEIGHT - 1.0) * ((x.amax(1, keepdim=True) - x.amin(1, keepdim=True)) > 0.15).float()
        rec = ((y - x).abs() * w).mean() + ((y - x) ** 2 * w).mean()
        kl = post.kl().mean()
        loss = rec + (0.0 if a.decoder_only else 1e-6) * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train_params, 1.0)
        opt.step()
        step += 1
        run = rec.item() if first else 0.95 * run + 0.05 * rec.item()
        first = False
        if step % 25 == 0 or step == a.steps:
            log(f"step {step} rec(l1+mse) {run:.4f} kl {kl.item():.1f} t {time.time() - t_start:.0f}s")
        if time.time() - t_save > a.save_min * 60 or step == a.steps or (a.minutes and time.time() - t_start > a.minutes * 60):
            common.save_ckpt(ck_path, vae=vae.state_dict(), opt=opt.state_dict(), step=step,
                             elapsed=time.time() - t_start)
            t_save = time.time()
    vae.eval()
    if a.decoder_only:
        with torch.no_grad():
            _, imgs = common.train_batch(base - 4096, 256)
            y = vae.decode(vae.encode(to_x(imgs)).latent_dist.mean).sample
            err = (y - to_x(imgs)).abs().mul(127.5).mean().item()
        vae.save_pretrained(out)
        log(f"done: {step} steps in {time.time() - t_start:.0f}s, scaling_factor kept "
            f"{vae.config.scaling_factor}, mean abs recon error {err:.2f}/255 on 256 images, wrote {out}")
        return
    with torch.no_grad():
        _, imgs = common.train_batch(base - 4096, 512)
        zs = torch.cat([vae.encode(to_x(imgs[i:i + 256])).latent_dist.mean for i in range(0, 512, 256)])
        sf = float(1.0 / zs.std())
        y = vae.decode(vae.encode(to_x(imgs[:256])).latent_dist.mean).sample
        err = (y - to_x(imgs[:256])).abs().mul(127.5).mean().item()
    vae.register_to_config(scaling_factor=round(sf, 5))
    vae.save_pretrained(out)
    log(f"done: {step} steps in {time.time() - t_start:.0f}s, scaling_factor {sf:.5f}, "
        f"mean abs recon error {err:.2f}/255 on 256 images, wrote {out}")


if __name__ == "__main__":
    main()
