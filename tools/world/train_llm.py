#!/usr/bin/env python3
"""Stage 4b: the LLM, trained with Visual-Predictive Instruction Tuning (VPiT) on the world.
A tiny LLaMA (llama3 rope) + model.mm_projector (mlp2x_gelu) + vision_head (mlp), on a
mixture of, in MetaMorph's chat format (tools/reference/metamorph_template.py):
  captioning  user "<image_start><image><image_end>\\nDescribe the image."  -> caption
  QA          user "<image_start><image><image_end>\\n{question}"           -> answer
  generation  user "Generate an image of {caption}."  -> "<image_start><image><image_end>"
Losses: cross-entropy on the assistant's text tokens (incl. <image_start>, <image_end>,
<|eot_id|>); for generation, the vision head's 64 outputs (from the hidden states at
<image_start> and at visual tokens 0..62, inputs = mm_projector(target tokens), teacher
forcing) against the frozen encoder's tokens of the target image: 1 - cosine similarity.
Needs work/tokens.pt. Writes assets/world/llm/{config,generation_config}.json,
model.safetensors and assets/world/metamorph.json. Resumable (work/llm.pt)."""
import argparse
import os
import random
import time

import common
import metamorph_ref
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

IMG = common.mt.IMAGE_TOKEN_INDEX
MIX = (("caption", 0.5), ("qa", 0.15), ("gen", 0.35))
COS_WEIGHT = 1.0


def make_config(tok):
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    eos = [tok.convert_tokens_to_ids("<|end_of_text|>"), tok.convert_tokens_to_ids("<|eot_id|>")]
    return LlamaConfig(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=384, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=None, initializer_range=0.02)


def metamorph_config(cfg):
    d = cfg.to_dict()
    for k in ("model_type", "architectures", "transformers_version"):
        d.pop(k, None)
    m = metamorph_ref.MetaMorphConfig(**d)
    m.architectures = ["MetaMorphLlamaForCausalLM"]
    m.mm_hidden_size = common.VIS_DIM
    m.mm_projector_type = "mlp2x_gelu"
    m.vision_head_type = "mlp"
    m.normalize_vision = True
    m.num_image_tokens = common.N_TOK
    m.image_token_reduction = "interpolation"
    m.mm_vision_select_layer = -1
    m.mm_vision_select_feature = "patch"
    m.mm_vision_tower = "siglip/CLIP-ViT-SO400M-14-384"
    m.mm_use_im_start_end = True
    m.mm_use_im_patch_token = False
    return m


class Examples:
    """Tokenised training conversations: (ids with -200, index where the answer starts)."""

    def __init__(self, tok):
        self.tok, self.cache = tok, {}

    def ids(self, user, answer):
        key = (user, answer)
        if key not in self.cache:
            prompt = common.mt.tokenizer_image_token(common.chat(user), self.tok)
            full = common.mt.tokenizer_image_token(common.chat(user, answer), self.tok)
            assert full[:len(prompt)] == prompt, (user, answer)
            self.cache[key] = (full, len(prompt))
        return self.cache[key]

    def make(self, rec, kind, rng):
        if kind == "caption":
            return self.ids(common.user_image_text(common.CAPTION_Q), rec["caption"]), "input"
        if kind == "qa":
            q, a = rng.choice(common.qa_pairs(rec))
            return self.ids(common.user_image_text(q), a), "input"
        return self.ids(common.GEN_Q.format(caption=rec["caption"]), common.IMAGE_ANSWER), "target"


def batch_tensors(items, n_tok):
    """items: [(ids, answer_start)] each with exactly one -200. Returns input ids [B, L]
    (image rows = 0), image mask [B, L], CE labels [B, L] (-100 = none) and the cosine
    mask [B, L] (positions whose hidden state predicts visual token k, in order)."""
    seqs = []
    for ids, start in items:
        s, ans = [], []
        for j, t in enumerate(ids):
            if t == IMG:
                s += [None] * n_tok
                ans += [j >= start] * n_tok
            else:
                s.append(t)
                ans.append(j >= start)
        seqs.append((s, ans))
    L = max(len(s) for s, _ in seqs)
    B = len(items)
    inp = torch.zeros(B, L, dtype=torch.long)
    img = torch.zeros(B, L, dtype=torch.bool)
    lab = torch.full((B, L), -100, dtype=torch.long)
    cos = torch.zeros(B, L, dtype=torch.bool)
    for b, (s, ans) in enumerate(seqs):
        for p, t in enumerate(s):
            if t is None:
                img[b, p] = True
                if ans[p]:
                    cos[b, p - 1] = True
            else:
                inp[b, p] = t
                if ans[p] and p > 0:
                    lab[b, p - 1] = t
    return inp, img, lab, cos


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-min", type=float, default=3.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    log = common.Log("llm")
    tok = AutoTokenizer.from_pretrained(os.path.join(common.ASSET, "llm"))
    feats = torch.load(os.path.join(common.WORK, "tokens.pt"), weights_only=False)
    recs, tokens = feats["records"], feats["tokens"]
    N = len(recs)
    cfg = make_config(tok)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    llm = LlamaForCausalLM(cfg)
    proj = metamorph_ref.build_projector("mlp2x_gelu", common.VIS_DIM, cfg.hidden_size)
    head = metamorph_ref.build_vision_head("mlp", cfg.hidden_size, common.VIS_DIM)
    params = list(llm.parameters()) + list(proj.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    ck_path = os.path.join(common.WORK, "llm.pt")
    step, elapsed = 0, 0.0
    ck = common.load_ckpt(ck_path)
    if ck:
        llm.load_state_dict(ck["llm"]); proj.load_state_dict(ck["proj"]); head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["opt"]); step, elapsed = ck["step"], ck["elapsed"]
        log(f"resumed at step {step}")
    rng = random.Random(1234 + step)
    ex = Examples(tok)
    kinds, weights = zip(*MIX)
    t_start, t_save = time.time() - elapsed, time.time()
    run = {"ce": 0.0, "cos": 0.0}

    def over():
        return a.minutes and time.time() - t_start > a.minutes * 60
    first = True   # the running averages start from the first step of this run (also after a resume)
    while step < a.steps and not over():
        items, imgs = [], []
        for _ in range(a.batch):
            i = rng.randrange(N)
            kind = rng.choices(kinds, weights)[0]
            items.append(ex.make(recs[i], kind, rng)[0])
            imgs.append(tokens[i].float())
        inp, img, lab, cos = batch_tensors(items, common.N_TOK)
        imgs = torch.stack(imgs)                                  # [B, 64, D]
        emb = llm.model.embed_tokens(inp)
        emb = emb.masked_scatter(img.unsqueeze(-1), proj(imgs).reshape(-1, cfg.hidden_size).to(emb.dtype))
        h = llm.model(inputs_embeds=emb, use_cache=False).last_hidden_state
        logits = llm.lm_head(h)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100)
        gen_rows = cos.any(1)
        if gen_rows.any():
            pred = head(h[cos]).reshape(-1, common.N_TOK, common.VIS_DIM)
            tgt = imgs[gen_rows]
            lc = (1 - F.cosine_similarity(pred, tgt, dim=-1)).mean()
        else:
            lc = torch.zeros(())
        loss = ce + COS_WEIGHT * lc
        for gr in opt.param_groups:
            gr["lr"] = common.lr_at(step, a.steps, a.lr, time.time() - t_start, a.minutes, warmup=50)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        for k, v in (("ce", ce.item()), ("cos", lc.item())):
            run[k] = v if first else 0.95 * run[k] + 0.05 * v
        first = False
        if step % 25 == 0:
            log(f"step {step} ce {run['ce']:.4f} cos_loss {run['cos']:.4f} t {time.time() - t_start:.0f}s")
        if time.time() - t_save > a.save_min * 60 or over():
            common.save_ckpt(ck_path, llm=llm.state_dict(), proj=proj.state_dict(), head=head.state_dict(),
                             opt=opt.state_dict(), step=step, elapsed=time.time() - t_start)
            t_save = time.time()
    save(llm, proj, head, cfg)
    log(f"done: {step} steps in {time.time() - t_start:.0f}s")


def save(llm, proj, head, cfg):
    out = os.path.join(common.ASSET, "llm")
    sd = {k: v.detach().contiguous() for k, v in llm.state_dict().items()}
    for k, v in proj.state_dict().items():
        sd["model.mm_projector." + k] = v.detach().contiguous()
    for k, v in head.state_dict().items():
        sd["vision_head." + k] = v.detach().contiguous()
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    metamorph_config(cfg).save_pretrained(out)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id).save_pretrained(out)
    import json
    with open(os.path.join(common.ASSET, "metamorph.json"), "w") as f:
        json.dump({"format": "metamorph", "version": 1, "llm": "llm", "vision": "vision", "decoder": "decoder"},
                  f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
