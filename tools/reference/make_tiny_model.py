#!/usr/bin/env python3
"""The embedded tiny MetaMorph model (LLM part) and its end-to-end goldens.

Needs assets/tiny/llm/tokenizer.json from make_tokenizer.py and assets/tiny/vision +
tests/golden/vision from make_tiny_vision.py.
Writes
  assets/tiny/metamorph.json                manifest
  assets/tiny/llm/config.json, generation_config.json, model.safetensors
      a MetaMorph LLaMA: model_type "metamorph_llama", the LLaMA tensors plus
      model.mm_projector.{0,2}.{weight,bias} (mlp2x_gelu, 48 -> 128 -> 128) and
      vision_head.{0,2}.{weight,bias} (mlp, 128 -> 128 -> 48)
  tests/golden/tiny/chat_greedy.jsonl       chat-template and raw prompts, greedy ids + text,
                                            decoded with the restated MetaMorph greedy_decode
  tests/golden/tiny/metamorph.jsonl         prompts with images and an image request
  tests/golden/tiny/metamorph.safetensors   their visual tokens, projector outputs and the
                                            generated images' visual tokens
"""

import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import metamorph_ref  # noqa: E402
import metamorph_template  # noqa: E402
import refutil  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (AutoTokenizer, GenerationConfig, LlamaConfig,  # noqa: E402
                          LlamaForCausalLM, SiglipImageProcessor, SiglipVisionModel)

ASSET = os.path.join(ROOT, "assets", "tiny")
LLM = os.path.join(ASSET, "llm")
VISION = os.path.join(ASSET, "vision")
GOLD_VISION = os.path.join(ROOT, "tests", "golden", "vision")
N_NEW = 96          # generated positions (text tokens + visual tokens)
MIN_GAP = 1e-3
STD = 0.15
MM_HIDDEN = 48      # the tiny SigLIP's hidden_size
N_IMAGE_TOKENS = 64
PROJ_STD = 0.3      # model.mm_projector weights and biases
HEAD_STD = 0.05     # vision_head weights and biases, except the last bias:
HEAD_BIAS_STD = 1.0 # generation feeds each visual token back; with random weights the loop
                    # is chaotic (f32 and f64 runs end 0.7 apart after 64 tokens) unless the
                    # vision head's output is dominated by a fixed bias, which makes the
                    # map from one token to the next contracting (the L2 norm divides the
                    # small varying part by the large fixed one)

# Prompts with images (understanding) and one image request: the assistant turn opened
# with <image_start> (DESIGN section 7), which starts greedy_decode in image mode.
MM_CASES = [
    {"messages": [{"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": "What is in this picture?"}]}],
     "images": ["rgb_300x211"]},
    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                               {"type": "text", "text": "Compare the two pictures."}]}],
     "images": ["progressive_161x97", "gray_50x31"]},
    {"messages": [{"role": "user", "content": "Draw a red square on a blue background."}],
     "images": [], "assistant_prefix": "<image_start>"},
]

CHAT = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Draw a cat sitting on a red chair."}],
    [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me a story about the sea, please. 你好 😀"}],
]
RAW = ["Once upon a time", "The capital of France is", "def fibonacci(n):\n"]


def make_config(tok):
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    eos = [tok.convert_tokens_to_ids("<|end_of_text|>"), tok.convert_tokens_to_ids("<|eot_id|>")]
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, head_dim=16, intermediate_size=352, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=None, initializer_range=STD)
    return cfg


def metamorph_config(cfg):
    """config.json of the MetaMorph LLaMA: the LLaMA fields plus the multimodal ones the
    reference reads (model_type metamorph_llama, MetaMorphLlamaForCausalLM)."""
    d = cfg.to_dict()
    for k in ("model_type", "architectures", "transformers_version"):
        d.pop(k, None)
    mcfg = metamorph_ref.MetaMorphConfig(**d)
    mcfg.architectures = ["MetaMorphLlamaForCausalLM"]
    mcfg.mm_hidden_size = MM_HIDDEN
    mcfg.mm_projector_type = "mlp2x_gelu"
    mcfg.vision_head_type = "mlp"
    mcfg.normalize_vision = True
    mcfg.num_image_tokens = N_IMAGE_TOKENS
    mcfg.image_token_reduction = "interpolation"
    mcfg.mm_vision_select_layer = -1
    mcfg.mm_vision_select_feature = "patch"
    mcfg.mm_vision_tower = "siglip/CLIP-ViT-SO400M-14-384"
    mcfg.mm_use_im_start_end = True
    mcfg.mm_use_im_patch_token = False
    return mcfg


def extra_modules(cfg, seed):
    """model.mm_projector and vision_head, from their own generator so that the LLaMA
    weights stay those of the seed."""
    proj = metamorph_ref.build_projector("mlp2x_gelu", MM_HIDDEN, cfg.hidden_size)
    head = metamorph_ref.build_vision_head("mlp", cfg.hidden_size, MM_HIDDEN)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for mod, std in ((proj, PROJ_STD), (head, HEAD_STD)):
            for name, p in sorted(mod.named_parameters(), key=lambda kv: kv[0]):
                s = HEAD_BIAS_STD if mod is head and name == "2.bias" else std
                p.copy_(s * torch.randn(p.shape, generator=g, dtype=torch.float32))
    return proj.eval(), head.eval()


def save_metamorph(model, proj, head, mcfg):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    for k, v in proj.state_dict().items():
        sd["model.mm_projector." + k] = v.contiguous()
    for k, v in head.state_dict().items():
        sd["vision_head." + k] = v.contiguous()
    save_file(sd, os.path.join(LLM, "model.safetensors"), metadata={"format": "pt"})
    mcfg.save_pretrained(LLM)


def load_metamorph(cfg):
    """Reads the checkpoint back: the LLaMA through transformers, the extra modules by name."""
    sd = load_file(os.path.join(LLM, "model.safetensors"))
    llm = LlamaForCausalLM(cfg).eval()
    missing, unexpected = llm.load_state_dict(
        {k: v for k, v in sd.items() if not k.startswith(("model.mm_projector.", "vision_head."))}, strict=True)
    proj = metamorph_ref.build_projector("mlp2x_gelu", MM_HIDDEN, cfg.hidden_size).eval()
    proj.load_state_dict({k[len("model.mm_projector."):]: v for k, v in sd.items() if k.startswith("model.mm_projector.")})
    head = metamorph_ref.build_vision_head("mlp", cfg.hidden_size, MM_HIDDEN).eval()
    head.load_state_dict({k[len("vision_head."):]: v for k, v in sd.items() if k.startswith("vision_head.")})
    return metamorph_ref.MetaMorphRef(llm, proj, head, normalize_vision=True, n_image_tokens=N_IMAGE_TOKENS)


def rope_bands(cfg):
    rs = cfg.rope_scaling
    old = rs["original_max_position_embeddings"]
    out = []
    for i in range(cfg.head_dim // 2):
        wl = 2 * math.pi * cfg.rope_theta ** (2 * i / cfg.head_dim)
        out.append("high" if wl < old / rs["high_freq_factor"] else
                   "low" if wl > old / rs["low_freq_factor"] else "mid")
    return out


def main():
    refutil.deterministic(0)
    tok = AutoTokenizer.from_pretrained(LLM)
    cfg = make_config(tok)
    print("rope bands:", rope_bands(cfg))
    eos = set(cfg.eos_token_id)

    cases = []
    for msgs in CHAT:
        prompt = metamorph_template.get_prompt_llama3(msgs, add_generation_prompt=True)
        cases.append({"messages": msgs,
                      "prompt_ids": metamorph_template.tokenizer_image_token(prompt, tok)})
    for text in RAW:
        ids = [cfg.bos_token_id] + tok(text, add_special_tokens=False).input_ids
        assert ids == tok(text).input_ids  # the post-processor adds exactly one BOS
        cases.append({"raw": text, "prompt_ids": ids})

    start_id = tok.convert_tokens_to_ids(metamorph_template.IM_START)
    end_id = tok.convert_tokens_to_ids(metamorph_template.IM_END)
    vis = load_file(os.path.join(GOLD_VISION, "golden.safetensors"))
    mm_cases = []
    for mc in MM_CASES:
        msgs = metamorph_template.render_image_parts(mc["messages"])
        prompt = metamorph_template.get_prompt_llama3(msgs, add_generation_prompt=True)
        prompt += mc.get("assistant_prefix", "")
        mm_cases.append(dict(mc, prompt_ids=metamorph_template.tokenizer_image_token(prompt, tok),
                             image_tokens=[vis["tokens." + n] for n in mc["images"]]))

    def decode_case(ref, c, dtype=torch.float32):
        toks = [t.to(dtype) for t in c.get("image_tokens", [])]
        emb = ref.embed_prompt(c["prompt_ids"], toks).to(dtype)
        # the reference loop makes max_new_tokens + 1 positions: ask for N_NEW - 1
        return ref.greedy_decode(emb, start_id, end_id, eos, N_NEW - 1,
                                 start_in_image_mode=c["prompt_ids"][-1] == start_id)

    for seed in range(1, 50):
        torch.manual_seed(seed)
        cfg._attn_implementation = "eager"
        model = LlamaForCausalLM(cfg).eval()
        refutil.init_llama_(model, seed=seed, std=STD)
        proj, head = extra_modules(cfg, seed)
        mcfg = metamorph_config(cfg)
        save_metamorph(model, proj, head, mcfg)
        ref = load_metamorph(cfg)
        ok = True
        for c in cases + mm_cases:
            r = decode_case(ref, c)
            c["result"] = r
            c["text"] = tok.decode(r["ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if min(r["gaps"]) < MIN_GAP or r["quirks"] or r["partial_image"]:
                ok = False
        if ok and mm_cases[-1]["result"]["images"]:
            break
        print(f"model seed {seed}: a top-2 gap below {MIN_GAP} or a reference quirk hit, trying another")
    else:
        raise SystemExit("no seed with safe gaps")

    # Cross-check the greedy paths with f64 arithmetic on the same weights.
    ref64 = load_metamorph(cfg)
    for mod in (ref64.llm, ref64.projector, ref64.head):
        mod.double()
    for c in cases + mm_cases:
        r64 = decode_case(ref64, c, torch.float64)
        d = [float((a - b).abs().max()) for a, b in zip(r64["images"], c["result"]["images"])]
        print("f64 check:", r64["ids"] == c["result"]["ids"], "image max diff", d)
        if r64["ids"] != c["result"]["ids"]:
            print(r64["ids"], c["result"]["ids"], c["result"]["gaps"])
        assert r64["ids"] == c["result"]["ids"], "f64 greedy path differs"
        assert all(x < 1e-4 for x in d)

    gen = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    gen.save_pretrained(LLM)
    # a part is listed once its generator has written its directory
    def part(name):
        return name if os.path.isdir(os.path.join(ASSET, name)) else None
    refutil.write_json(os.path.join(ASSET, "metamorph.json"),
                       {"format": "metamorph", "version": 1, "llm": "llm", "vision": part("vision"),
                        "decoder": part("decoder")})

    tensors = {}

    def result_fields(c, key):
        r = c["result"]
        for k, img in enumerate(r["images"]):
            tensors[f"generated.{key}.{k}"] = img.contiguous()
        return dict(max_new_tokens=N_NEW, greedy_ids=r["ids"], n_positions=r["positions"],
                    n_images=len(r["images"]), stop_reason=r["stop"], text=c["text"],
                    min_top2_gap=min(r["gaps"]))

    rows = []
    for i, c in enumerate(cases):
        r = {}
        if "messages" in c:
            r["messages"] = c["messages"]
        else:
            r["raw"] = c["raw"]
        r["prompt_ids"] = c["prompt_ids"]
        r.update(result_fields(c, f"chat{i}"))
        rows.append(r)
    refutil.write_jsonl(os.path.join(ROOT, "tests", "golden", "tiny", "chat_greedy.jsonl"), rows)
    mm_rows = []
    for i, c in enumerate(mm_cases):
        r = {"messages": c["messages"], "images": ["images/" + n for n in c["images"]]}
        files = {m["name"]: m["file"] for m in refutil_json(os.path.join(GOLD_VISION, "golden.json"))["images"]}
        r["images"] = [files[n] for n in c["images"]]
        if "assistant_prefix" in c:
            r["assistant_prefix"] = c["assistant_prefix"]
        r["prompt_ids"] = c["prompt_ids"]
        r.update(result_fields(c, f"mm{i}"))
        mm_rows.append(r)
        for n, t in zip(c["images"], c["image_tokens"]):
            tensors[f"projected.{n}"] = ref.projector(t).detach().contiguous()
    refutil.write_jsonl(os.path.join(ROOT, "tests", "golden", "tiny", "metamorph.jsonl"), mm_rows)
    save_file(tensors, os.path.join(ROOT, "tests", "golden", "tiny", "metamorph.safetensors"), metadata={"format": "pt"})
    print(f"model seed {seed}; vocab {cfg.vocab_size}")
    for c in cases + mm_cases:
        r = c["result"]
        print(f"    gap {min(r['gaps']):.4f} images {len(r['images'])} positions {r['positions']} {r['stop']}",
              repr(c["text"][:50]))


def refutil_json(path):
    import json
    with open(path, encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    main()
