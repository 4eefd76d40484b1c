#!/usr/bin/env python3
"""Stage 4a: the visualizer's UNet + adapter. A tiny diffusers UNet2DConditionModel
(SD 1.5 block types) and MetaMorph's adapter (SimplifiedSigLIPProjector, 'mlp' mode)
trained to denoise the VAE latents of world images, conditioned on the frozen
encoder's 64 visual tokens (adapter output [64, CROSS_DIM], zero-padded to 77 rows, as
the serving decoder does). Classifier-free guidance: 10% of the conditions are all
zeros (the serving decoder's negative embeddings). Noise schedule: SD 1.5's
(scaled_linear 0.00085..0.012, 1000 steps, epsilon prediction).
Needs work/tokens.pt and work/latents.pt. Writes assets/world/decoder/{unet,adapter,scheduler}/.
Resumable (work/unet.pt)."""
import argparse
import json
import os
import time

import common
import torch
import torch.nn.functional as F
from convert_visualizer import SimplifiedSigLIPProjector, save_adapter
from diffusers import DDPMScheduler, UNet2DConditionModel

SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                  "steps_offset": 1, "trained_betas": None}
CFG_DROP = 0.1


def build():
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=common.LATENT, in_channels=4, out_channels=4, center_input_sample=False,
        flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention=False, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
        downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=8, norm_eps=1e-5,
        cross_attention_dim=common.CROSS_DIM, attention_head_dim=4, use_linear_projection=False,
        upcast_attention=False, resnet_time_scale_shift="default")
    torch.manual_seed(3)
    adapter = SimplifiedSigLIPProjector(input_dim=common.VIS_DIM, hidden_dim=128, output_dim=common.CROSS_DIM,
                                        num_tokens=77, num_layers=3, num_heads=8, mode="mlp")
    return unet, adapter


def condition(adapter, tokens):
    """[B, 64, VIS_DIM] -> [B, 77, CROSS_DIM] (adapter, zero rows 64..76)."""
    c = adapter(tokens)
    return F.pad(c, (0, 0, 0, 77 - c.shape[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-min", type=float, default=3.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    log = common.Log("unet")
    tokens = torch.load(os.path.join(common.WORK, "tokens.pt"), weights_only=False)["tokens"]
    latents = torch.load(os.path.join(common.WORK, "latents.pt"), weights_only=False)["latents"]
    N = tokens.shape[0]
    unet, adapter = build()
    params = list(unet.parameters()) + list(adapter.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type="epsilon")
    ck_path = os.path.join(common.WORK, "unet.pt")
    step, elapsed = 0, 0.0
    ck = common.load_ckpt(ck_path)
    if ck:
        unet.load_state_dict(ck["unet"]); adapter.load_state_dict(ck["adapter"]); opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck["elapsed"]
        log(f"resumed at step {step}")
    g = torch.Generator().manual_seed(1000 + step)
    t_start, t_save, run = time.time() - elapsed, time.time(), 0.0

    def over():
        return a.minutes and time.time() - t_start > a.minutes * 60
    first = True   # the running averages start from the first step of this run (also after a resume)
    while step < a.steps and not over():
        idx = torch.randint(0, N, (a.batch,), generator=g)
        z0 = latents[idx]
        tok = tokens[idx].float()
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (a.batch,), generator=g)
        zt = sched.add_noise(z0, noise, t)
        cond = condition(adapter, tok)
        keep = (torch.rand(a.batch, generator=g) >= CFG_DROP).float().view(-1, 1, 1)
        cond = cond * keep
        for gr in opt.param_groups:
            gr["lr"] = common.lr_at(step, a.steps, a.lr, time.time() - t_start, a.minutes, warmup=50)
        eps = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(eps, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        run = loss.item() if first else 0.98 * run + 0.02 * loss.item()
        first = False
        if step % 50 == 0:
            log(f"step {step} eps_mse {run:.4f} t {time.time() - t_start:.0f}s")
        if time.time() - t_save > a.save_min * 60 or step == a.steps or over():
            common.save_ckpt(ck_path, unet=unet.state_dict(), adapter=adapter.state_dict(), opt=opt.state_dict(),
                             step=step, elapsed=time.time() - t_start)
            t_save = time.time()
    dec = os.path.join(common.ASSET, "decoder")
    unet.save_pretrained(os.path.join(dec, "unet"))
    save_adapter(adapter, os.path.join(dec, "adapter"))
    os.makedirs(os.path.join(dec, "scheduler"), exist_ok=True)
    with open(os.path.join(dec, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SD15_SCHEDULER, f, indent=2)
        f.write("\n")
    log(f"done: {step} steps in {time.time() - t_start:.0f}s, wrote {dec}")


if __name__ == "__main__":
    main()
