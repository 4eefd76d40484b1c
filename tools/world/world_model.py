"""The world MetaMorph in PyTorch: load assets/world (transformers LLaMA + mm_projector +
vision_head as in tools/reference/metamorph_ref.py, SigLIP + its image processor), the
service's prompts, greedy captioning, and the caption attribute accuracy."""
import json
import os
import re

import common
import metamorph_ref
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, SiglipImageProcessor, SiglipVisionModel

PHRASE = re.compile(r"a (small|large) (red|green|blue|yellow|purple|orange) (circle|square|triangle|cross) "
                    r"(on the left|on the right|at the top|at the bottom|in the centre)")
POS_OF = {v: k for k, v in common.world.POS_WORDS.items()}
ATTRS = ("colour", "shape", "size", "position")


def caption_prompt_ids(tok):
    return common.mt.tokenizer_image_token(common.chat(common.user_image_text(common.CAPTION_Q)), tok)


def generation_prompt_ids(tok, caption):
    return common.mt.tokenizer_image_token(common.chat(common.GEN_Q.format(caption=caption)), tok)


def load(asset=common.ASSET):
    llm_dir = os.path.join(asset, "llm")
    tok = AutoTokenizer.from_pretrained(llm_dir)
    with open(os.path.join(llm_dir, "config.json")) as f:
        c = json.load(f)
    cfg = LlamaConfig(**{k: v for k, v in c.items() if k not in ("model_type", "architectures")})
    cfg._attn_implementation = "eager"
    sd = load_file(os.path.join(llm_dir, "model.safetensors"))
    llm = LlamaForCausalLM(cfg).eval()
    llm.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("model.mm_projector.", "vision_head."))})
    proj = metamorph_ref.build_projector(c["mm_projector_type"], c["mm_hidden_size"], c["hidden_size"]).eval()
    proj.load_state_dict({k[len("model.mm_projector."):]: v for k, v in sd.items() if k.startswith("model.mm_projector.")})
    head = metamorph_ref.build_vision_head(c["vision_head_type"], c["hidden_size"], c["mm_hidden_size"]).eval()
    head.load_state_dict({k[len("vision_head."):]: v for k, v in sd.items() if k.startswith("vision_head.")})
    ref = metamorph_ref.MetaMorphRef(llm, proj, head, normalize_vision=True, n_image_tokens=c["num_image_tokens"])
    vis = SiglipVisionModel.from_pretrained(os.path.join(asset, "vision")).eval()
    proc = SiglipImageProcessor.from_pretrained(os.path.join(asset, "vision"))
    return dict(tok=tok, cfg=cfg, ref=ref, vis=vis, proc=proc, eos=set(cfg.eos_token_id if isinstance(
        cfg.eos_token_id, list) else [cfg.eos_token_id]))


@torch.no_grad()
def image_tokens(m, pil_images):
    x = m["proc"](images=[im.convert("RGB") for im in pil_images], return_tensors="pt")["pixel_values"]
    return metamorph_ref.vision_tower(m["vis"], x, common.N_TOK, select_layer=-1, normalize=True)[1]


@torch.no_grad()
def greedy_text(m, prompt_ids, image_toks, max_new=48):
    """Greedy decoding of text (KV cache). Same argmax path as metamorph_ref.greedy_decode
    while the model stays in text; stops at an EOS id. Returns generated ids (EOS included)."""
    ref = m["ref"]
    emb = ref.embed_prompt(prompt_ids, [t for t in image_toks])
    out = ref.llm(inputs_embeds=emb, use_cache=True)
    past, ids = out.past_key_values, []
    logits = out.logits[0, -1]
    for _ in range(max_new):
        nxt = int(torch.argmax(logits))
        ids.append(nxt)
        if nxt in m["eos"]:
            break
        out = ref.llm(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
    return ids


def parse_caption(text):
    return [{"size": s, "colour": c, "shape": sh, "position": POS_OF[p]} for s, c, sh, p in PHRASE.findall(text)]


def score(pred_text, gt_objects):
    """Per ground-truth object: the predicted object at the same position (positions are
    unique in an image) -> colour/shape/size correct; position correct when the prediction
    names that position. Returns {attr: (correct, total)} and exact (caption equality is
    checked by the caller)."""
    pred = parse_caption(pred_text)
    by_pos = {p["position"]: p for p in pred}
    res = {a: [0, 0] for a in ATTRS}
    for o in gt_objects:
        p = by_pos.get(o["position"])
        for a in ATTRS:
            res[a][1] += 1
            res[a][0] += int(p is not None and p[a] == o[a])
    return res


@torch.no_grad()
def generate(m, prompt_ids, max_new=72, start_in_image_mode=False):
    """metamorph_ref.greedy_decode with a KV cache: same control flow and counters
    (text argmax; <image_start> enters image mode; in image mode the vision head's
    L2-normalised prediction from the last final-norm hidden state is the visual token and
    mm_projector(prediction) the next input; after num_image_tokens tokens back to text;
    the loop stops at an EOS argmax, also one computed from lm_head(projected prediction)
    in image mode, or after max_new + 1 positions). Returns dict(ids, images, stop)."""
    ref, tok = m["ref"], m["tok"]
    start_id = tok.convert_tokens_to_ids(common.mt.IM_START)
    end_id = tok.convert_tokens_to_ids(common.mt.IM_END)
    model = ref.llm.model
    emb = ref.embed_prompt(prompt_ids, [])
    out = model(inputs_embeds=emb, use_cache=True)
    past, h = out.past_key_values, out.last_hidden_state[:, -1]
    in_img, n_img, total = start_in_image_mode, 0, 0
    ids, images, cur, stop = [], [], [], "length"
    while True:
        if in_img:
            pred = torch.nn.functional.normalize(ref.head(h), p=2, dim=-1)
            last = ref.projector(pred)
            nxt = int(torch.argmax(ref.llm.lm_head(last)[0]))
            n_img += 1
            cur.append(pred[0])
            nxt_emb = last.unsqueeze(1)
            if n_img == ref.n_image_tokens:
                in_img = False
                images.append(torch.stack(cur))
                cur = []
        else:
            nxt = int(torch.argmax(ref.llm.lm_head(h)[0]))
            if nxt == start_id:
                in_img = True
            elif nxt == end_id:
                n_img = 0
            ids.append(nxt)
            nxt_emb = model.embed_tokens(torch.tensor([[nxt]]))
        total += 1
        if nxt in m["eos"]:
            stop = "eos"
            break
        if total > max_new:
            break
        out = model(inputs_embeds=nxt_emb, past_key_values=past, use_cache=True)
        past, h = out.past_key_values, out.last_hidden_state[:, -1]
    return dict(ids=ids, images=images, stop=stop)


def load_decoder(asset=common.ASSET):
    import json as _json
    from convert_visualizer import SimplifiedSigLIPProjector
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    dec = os.path.join(asset, "decoder")
    with open(os.path.join(dec, "adapter", "config.json")) as f:
        acfg = _json.load(f)
    adapter = SimplifiedSigLIPProjector(**acfg).eval()
    adapter.load_state_dict(load_file(os.path.join(dec, "adapter", "model.safetensors")))
    return dict(adapter=adapter, unet=UNet2DConditionModel.from_pretrained(os.path.join(dec, "unet")).eval(),
                vae=AutoencoderKL.from_pretrained(os.path.join(dec, "vae")).eval(),
                sched=PNDMScheduler.from_pretrained(os.path.join(dec, "scheduler")))


@torch.no_grad()
def decode_image(d, tokens, steps=50, guidance=7.5, seed=0):
    """64 visual tokens -> uint8 [64, 64, 3]: adapter, zero-padded to 77 rows, CFG with
    all-zero negative embeddings, PNDM (the scheduler config), VAE decode / scaling_factor
    (what StableDiffusionPipeline does with prompt_embeds and negative_prompt_embeds = 0)."""
    import numpy as np
    sched = d["sched"]
    sched.set_timesteps(steps)
    c = d["adapter"](tokens.unsqueeze(0))
    c = torch.nn.functional.pad(c, (0, 0, 0, 77 - c.shape[1]))
    cond = torch.cat([torch.zeros_like(c), c])
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, common.LATENT, common.LATENT, generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        e = d["unet"](torch.cat([z, z]), t, encoder_hidden_states=cond).sample
        eu, ec = e.chunk(2)
        z = sched.step(eu + guidance * (ec - eu), t, z).prev_sample
    x = d["vae"].decode(z / d["vae"].config.scaling_factor).sample
    x = (x / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return (x * 255).round().astype(np.uint8)
