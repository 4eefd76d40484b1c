#!/usr/bin/env python3
"""Stage 1: the vision encoder. A tiny SiglipVisionModel (126 px, patch 14 -> 9x9 patches)
trained with SigLIP's sigmoid loss against a tiny SiglipTextModel on (image, caption)
pairs of the world; pairs with the same caption count as positives. The text tower is
thrown away. Writes assets/world/vision/ (model + preprocessor_config.json).
Resumable: work/siglip.pt is saved every --save-min minutes."""
import argparse
import os
import time

import common
import torch
import torch.nn.functional as F
from transformers import (AutoTokenizer, SiglipImageProcessor, SiglipTextConfig, SiglipTextModel,
                          SiglipVisionConfig, SiglipVisionModel)

TXT_LEN = 24


def build():
    vcfg = SiglipVisionConfig(hidden_size=common.VIS_DIM, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_channels=3, image_size=common.IMG, patch_size=14,
                              hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0)
    tok = AutoTokenizer.from_pretrained(os.path.join(common.ASSET, "llm"))
    tcfg = SiglipTextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=TXT_LEN, projection_size=common.VIS_DIM,
                            pad_token_id=tok.convert_tokens_to_ids("<|finetune_right_pad_id|>"))
    torch.manual_seed(0)
    vis, txt = SiglipVisionModel(vcfg), SiglipTextModel(tcfg)
    scale = torch.nn.Parameter(torch.tensor(2.302585))   # log 10 (SigLIP's init)
    bias = torch.nn.Parameter(torch.tensor(-10.0))
    return vis, txt, scale, bias, tok


def encode_text(tok, caps, pad):
    ids = torch.full((len(caps), TXT_LEN), pad, dtype=torch.long)
    for i, c in enumerate(caps):
        t = tok(c, add_special_tokens=False).input_ids[:TXT_LEN - 1]
        ids[i, :len(t)] = torch.tensor(t)
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-min", type=float, default=3.0)
    ap.add_argument("--minutes", type=float, default=0, help="wall-time budget: stop then (0 = --steps only); the LR schedule follows elapsed/budget")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    log = common.Log("siglip")
    vis, txt, scale, bias, tok = build()
    params = list(vis.parameters()) + list(txt.parameters()) + [scale, bias]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    ck_path = os.path.join(common.WORK, "siglip.pt")
    step, elapsed = 0, 0.0
    ck = common.load_ckpt(ck_path)
    if ck:
        vis.load_state_dict(ck["vis"]); txt.load_state_dict(ck["txt"]); opt.load_state_dict(ck["opt"])
        with torch.no_grad():
            scale.copy_(ck["scale"]); bias.copy_(ck["bias"])
        step, elapsed = ck["step"], ck["elapsed"]
        log(f"resumed at step {step}")
    pad = tok.convert_tokens_to_ids("<|finetune_right_pad_id|>")
    t_start, t_save = time.time() - elapsed, time.time()
    run = 0.0
    first = True   # the running averages start from the first step of this run (also after a resume)
    while step < a.steps and not (a.minutes and time.time() - t_start > a.minutes * 60):
        recs, imgs = common.train_batch(step * a.batch, a.batch)
        caps = [r["caption"] for r in recs]
        x = common.pixels(imgs)
        ids = encode_text(tok, caps, pad)
        for g in opt.param_groups:
            g["lr"] = common.lr_at(step, a.steps, a.lr, time.time() - t_start, a.minutes, warmup=30)
        zi = F.normalize(vis(pixel_values=x).pooler_output, dim=-1)
        zt = F.normalize(txt(input_ids=ids).pooler_output, dim=-1)
        logits = zi @ zt.t() * scale.exp() + bias
        same = torch.tensor([[ci == cj for cj in caps] for ci in caps], dtype=torch.float32)
        loss = -F.logsigmoid((2 * same - 1) * logits).sum() / len(caps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        run = loss.item() if first else 0.95 * run + 0.05 * loss.item()
        first = False
        if step % 25 == 0 or step == a.steps:
            with torch.no_grad():
                acc = (logits.argmax(1) == torch.arange(len(caps))).float().mean().item()
                accs = same[torch.arange(len(caps)), logits.argmax(1)].mean().item()
            log(f"step {step} loss {run:.4f} i2t_top1_same_caption {accs:.3f} t {time.time() - t_start:.0f}s")
        if time.time() - t_save > a.save_min * 60 or step == a.steps or (a.minutes and time.time() - t_start > a.minutes * 60):
            common.save_ckpt(ck_path, vis=vis.state_dict(), txt=txt.state_dict(), opt=opt.state_dict(),
                             scale=scale.detach(), bias=bias.detach(), step=step, elapsed=time.time() - t_start)
            t_save = time.time()
    out = os.path.join(common.ASSET, "vision")
    vis.save_pretrained(out)
    SiglipImageProcessor(do_resize=True, size={"height": common.IMG, "width": common.IMG}, resample=3,
                         do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(out)
    log(f"done: {step} steps in {time.time() - t_start:.0f}s, wrote {out}")


if __name__ == "__main__":
    main()
