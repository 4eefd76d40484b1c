#!/usr/bin/env python3
"""The embedded tiny diffusion decoder (adapter + SD-1.5-style UNet + VAE + PNDM
scheduler, diffusers layout) and its goldens, all computed by diffusers / torch.

Writes
  assets/tiny/decoder/{unet,vae,scheduler,adapter}/   save_pretrained layout
  tests/golden/decoder/golden.safetensors            inputs and outputs (f32)
  tests/golden/decoder/golden.json                   scalars, timestep lists, PNG stats
  tests/golden/decoder/image_<sampler>.png           final images (uint8 RGB)

The tiny model keeps every SD-1.5 config field and block type; only widths shrink:
UNet block_out_channels (16, 32, 32, 32), norm_num_groups 8, 4 heads (attention_head_dim 4),
cross_attention_dim 32; VAE block_out_channels (8, 16, 16, 16), groups 8; adapter
48 -> 64 -> 64 -> 32 ('mlp' mode, num_layers 3). Latents 8x8 -> 64x64 image.
Weights: PyTorch's default init (seeded), then every norm weight 1 + N(0, 0.1) and
norm bias N(0, 0.1), so that the affine parts matter. Stored in f32.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import refutil  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel)
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
from convert_visualizer import SimplifiedSigLIPProjector, save_adapter  # noqa: E402

DEC = os.path.join(ROOT, "assets", "tiny", "decoder")
GOLD = os.path.join(ROOT, "tests", "golden", "decoder")
VIS_DIM = 48          # tiny SigLIP hidden size (the real one is 1152)
CROSS_DIM = 32        # cross_attention_dim (768 in SD 1.5)
LATENT = 8            # latent side; image side = 8 * LATENT
GUIDANCE = 7.5
STEPS = {"pndm": 5, "ddim": 4, "dpmpp2m": 5}


def perturb_norms_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in sorted(model.named_modules(), key=lambda kv: kv[0]):
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and mod.weight is not None:
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))


def make_unet():
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, center_input_sample=False,
        flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention=False, block_out_channels=(16, 32, 32, 32), layers_per_block=2,
        downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=8, norm_eps=1e-5,
        cross_attention_dim=CROSS_DIM, attention_head_dim=4, use_linear_projection=False,
        upcast_attention=False, resnet_time_scale_shift="default")
    perturb_norms_(unet, 11)
    return unet.eval()


def make_vae():
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=2, act_fn="silu", latent_channels=4,
        norm_num_groups=8, sample_size=8 * LATENT, scaling_factor=0.18215)
    perturb_norms_(vae, 12)
    return vae.eval()


# SD 1.5's scheduler/scheduler_config.json as published (keys it lacks, such as
# timestep_spacing, take each scheduler class's own default, in diffusers and in C).
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                  "steps_offset": 1, "trained_betas": None}


def make_scheduler():
    d = os.path.join(DEC, "scheduler")
    refutil.write_json(os.path.join(d, "scheduler_config.json"), SD15_SCHEDULER)
    return PNDMScheduler.from_pretrained(d)


def scheduler_for(name, base):
    cls = {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "dpmpp2m": DPMSolverMultistepScheduler}[name]
    return cls.from_config(base.config)


def main():
    refutil.deterministic(0)
    os.makedirs(GOLD, exist_ok=True)
    unet, vae, sched = make_unet(), make_vae(), make_scheduler()
    torch.manual_seed(3)
    adapter = SimplifiedSigLIPProjector(input_dim=VIS_DIM, hidden_dim=64, output_dim=CROSS_DIM, num_tokens=77,
                                        num_layers=3, num_heads=8, mode="mlp")
    perturb_norms_(adapter, 13)
    adapter.eval()

    unet.save_pretrained(os.path.join(DEC, "unet"))
    vae.save_pretrained(os.path.join(DEC, "vae"))
    save_adapter(adapter, os.path.join(DEC, "adapter"))

    g = torch.Generator().manual_seed(4)
    tokens = torch.nn.functional.normalize(torch.randn(64, VIS_DIM, generator=g), dim=-1)
    noise = torch.randn(1, 4, LATENT, LATENT, generator=g)
    unet_x = torch.randn(2, 4, LATENT, LATENT, generator=g)
    vae_z = torch.randn(1, 4, LATENT, LATENT, generator=g)

    out = {"tokens": tokens, "noise": noise, "unet_x": unet_x, "vae_z": vae_z}
    meta = {"guidance": GUIDANCE, "steps": STEPS, "latent": LATENT, "unet_timesteps": [981, 500, 1]}
    with torch.no_grad():
        cond = adapter(tokens[None])                                     # [1, 64, 32]
        cond = torch.cat([cond, torch.zeros(1, 77 - 64, CROSS_DIM)], 1)  # [1, 77, 32]
        out["adapter_out"] = cond[0]
        ctx = torch.cat([torch.zeros_like(cond), cond])                  # [uncond, cond]
        for t in meta["unet_timesteps"]:
            out[f"unet_eps.{t}"] = unet(unet_x, torch.tensor(t), encoder_hidden_states=ctx).sample
        out["vae_image"] = vae.decode(vae_z / vae.config.scaling_factor).sample  # [1, 3, 64, 64]

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    meta["timesteps"] = {}
    meta["timesteps_full"] = {}
    for name, steps in STEPS.items():
        pipe.scheduler = scheduler_for(name, sched)
        kw = dict(prompt_embeds=cond, negative_prompt_embeds=torch.zeros_like(cond), guidance_scale=GUIDANCE,
                  num_inference_steps=steps, latents=noise.clone())
        with torch.no_grad():
            lat = pipe(output_type="latent", **kw).images          # [1, 4, 8, 8]
            img = pipe(output_type="np", **kw).images[0]           # [64, 64, 3] in [0, 1]
        out[f"latents.{name}"] = lat
        out[f"image.{name}"] = torch.from_numpy(img)
        meta["timesteps"][name] = [int(t) for t in pipe.scheduler.timesteps]
        pil = pipe.numpy_to_pil(img[None])[0]
        pil.save(os.path.join(GOLD, f"image_{name}.png"))
        for n in (20, 50):
            s = scheduler_for(name, sched)
            s.set_timesteps(n)
            meta["timesteps_full"][f"{name}.{n}"] = [int(t) for t in s.timesteps]

    save_file({k: v.detach().contiguous().float() for k, v in out.items()},
              os.path.join(GOLD, "golden.safetensors"), metadata={"generator": "make_decoder_goldens.py"})
    meta["stats"] = {k: [float(v.abs().max()), float(v.float().std())] for k, v in out.items()}
    refutil.write_json(os.path.join(GOLD, "golden.json"), meta)
    for k, (mx, sd) in meta["stats"].items():
        print(f"{k:20s} max|x| {mx:9.4f} std {sd:8.4f}")


if __name__ == "__main__":
    main()
