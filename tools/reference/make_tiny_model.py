#!/usr/bin/env python3
"""The embedded tiny MetaMorph model (LLM part) and its end-to-end goldens.

Needs assets/tiny/llm/tokenizer.json from make_tokenizer.py.
Writes
  assets/tiny/metamorph.json                manifest
  assets/tiny/llm/config.json, generation_config.json, model.safetensors
  tests/golden/tiny/chat_greedy.jsonl       chat-template and raw prompts, greedy ids + text
"""

import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import metamorph_template  # noqa: E402
import refutil  # noqa: E402

import torch  # noqa: E402
from transformers import (AutoTokenizer, GenerationConfig, LlamaConfig,  # noqa: E402
                          LlamaForCausalLM)

ASSET = os.path.join(ROOT, "assets", "tiny")
LLM = os.path.join(ASSET, "llm")
N_NEW = 32
MIN_GAP = 1e-3
STD = 0.15

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

    for seed in range(1, 50):
        torch.manual_seed(seed)
        cfg._attn_implementation = "eager"
        model = LlamaForCausalLM(cfg).eval()
        refutil.init_llama_(model, seed=seed, std=STD)
        model.save_pretrained(LLM, safe_serialization=True)
        ref = LlamaForCausalLM.from_pretrained(LLM, dtype=torch.float32, attn_implementation="eager").eval()
        ok = True
        for c in cases:
            new, gaps, why = refutil.greedy(ref, c["prompt_ids"], N_NEW, eos_ids=eos)
            c["greedy_ids"] = new
            c["stop_reason"] = why
            c["min_top2_gap"] = min(gaps)
            c["text"] = tok.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if min(gaps) < MIN_GAP:
                ok = False
        if ok:
            break
        print(f"model seed {seed}: a top-2 gap below {MIN_GAP}, trying another")
    else:
        raise SystemExit("no seed with safe gaps")

    # Cross-check the greedy paths with f64 arithmetic on the same weights.
    ref64 = LlamaForCausalLM.from_pretrained(LLM, dtype=torch.float32, attn_implementation="eager").eval().double()
    for c in cases:
        new64, _, _ = refutil.greedy(ref64, c["prompt_ids"], N_NEW, eos_ids=eos)
        assert new64 == c["greedy_ids"]

    gen = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    gen.save_pretrained(LLM)
    # a part is listed once its generator has written its directory
    def part(name):
        return name if os.path.isdir(os.path.join(ASSET, name)) else None
    refutil.write_json(os.path.join(ASSET, "metamorph.json"),
                       {"format": "metamorph", "version": 1, "llm": "llm", "vision": part("vision"),
                        "decoder": part("decoder")})

    rows = []
    for c in cases:
        r = {}
        if "messages" in c:
            r["messages"] = c["messages"]
        else:
            r["raw"] = c["raw"]
        r.update(prompt_ids=c["prompt_ids"], max_new_tokens=N_NEW, greedy_ids=c["greedy_ids"],
                 stop_reason=c["stop_reason"], text=c["text"], min_top2_gap=c["min_top2_gap"])
        rows.append(r)
    refutil.write_jsonl(os.path.join(ROOT, "tests", "golden", "tiny", "chat_greedy.jsonl"), rows)
    print(f"model seed {seed}; vocab {cfg.vocab_size}; min gaps",
          [round(c["min_top2_gap"], 4) for c in cases], "stops", [c["stop_reason"] for c in cases])
    for c in cases:
        print("   ", repr(c["text"][:70]))


if __name__ == "__main__":
    main()
