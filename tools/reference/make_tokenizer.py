#!/usr/bin/env python3
"""Train the tiny LLaMA-3-style tokenizer and write the tokenizer goldens.

Outputs
  assets/tiny/llm/tokenizer.json, tokenizer_config.json, special_tokens_map.json
  tests/golden/tokenizer/encodings.jsonl
  tests/golden/tokenizer/chat.jsonl          (MetaMorph conv_llama_3 + tokenizer_image_token)
  tests/golden/tokenizer/chat_image.jsonl    (same, with an image placeholder -> -200)
  tests/golden/tokenizer/llama3_real/encodings.jsonl  (only with --real-tokenizer PATH)

The tokenizer reproduces the structure of Meta's LLaMA-3 tokenizer.json
(pre-tokenizer, model options, decoder, post-processor, added tokens) with a
small vocabulary trained here on tools/reference/tokenizer_corpus.txt plus
seeded generated text.
"""

import argparse
import json
import os
import random
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,  # noqa: E402
                        pre_tokenizers, processors, trainers)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import tokenizer_texts  # noqa: E402
import metamorph_template  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

BPE_VOCAB = 1776  # 256 byte tokens + 1520 merges
# Same layout as the first ids of LLaMA-3.1's added tokens (128000 + i).
SPECIALS = [
    "<|begin_of_text|>",            # +0
    "<|end_of_text|>",              # +1
    "<|reserved_special_token_0|>",  # +2
    "<|reserved_special_token_1|>",  # +3
    "<|finetune_right_pad_id|>",    # +4
    "<|reserved_special_token_2|>",  # +5
    "<|start_header_id|>",          # +6
    "<|end_header_id|>",            # +7
    "<|eom_id|>",                   # +8
    "<|eot_id|>",                   # +9
    "<|python_tag|>",               # +10
    "<|reserved_special_token_3|>",  # +11
    "<|reserved_special_token_4|>",  # +12
    "<|reserved_special_token_5|>",  # +13
    "<|reserved_special_token_6|>",  # +14
    "<|reserved_special_token_7|>",  # +15
]
IMAGE_TOKENS = ["<image_start>", "<image_end>"]


def training_corpus():
    with open(os.path.join(HERE, "tokenizer_corpus.txt"), encoding="utf-8") as f:
        text = f.read()
    docs = [p for p in text.split("\n\n") if p]
    # The file is the hand-written part; add seeded generated text so that the
    # merges see enough repetitions (CRLF files, numbers, chat-like lines).
    rng = random.Random(1234)
    words = sorted(set(w for w in text.replace("\n", " ").split(" ") if w))
    for _ in range(600):
        n = rng.randint(4, 18)
        s = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.2:
            s = s.replace(" ", "\r\n", 1)
        if rng.random() < 0.2:
            s = "    " + s
        docs.append(s + rng.choice([".", "!", "?", "\n", ".\n\n", "\r\n"]))
    for _ in range(200):
        docs.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 9))) for _ in range(rng.randint(1, 6))))
    return docs


def build_tokenizer():
    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=True, fuse_unk=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    assert tok.get_vocab_size() == BPE_VOCAB, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False,
                                       single_word=False) for s in SPECIALS])
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single="<|begin_of_text|>:0 $A:0",
            pair="<|begin_of_text|>:0 $A:0 <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos_id)]),
    ])
    return tok


def to_hf(tok, out_dir):
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        model_max_length=2048, clean_up_tokenization_spaces=False)
    # Exactly what MetaMorph does (metamorph_arch.initialize_vision_tokenizer and
    # model/builder.load_pretrained_model, mm_use_im_start_end=True):
    n = hf.add_tokens(IMAGE_TOKENS, special_tokens=True)
    assert n == 2
    hf.save_pretrained(out_dir)
    return hf


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def encodings(tok_path):
    """ids: added-token strings NOT recognised (treated as text);
    ids_special: added tokens recognised (HF default). No BOS in either."""
    plain = Tokenizer.from_file(tok_path)
    plain.encode_special_tokens = True
    special = Tokenizer.from_file(tok_path)
    rows = []
    for text in tokenizer_texts.all_texts():
        ids = plain.encode(text, add_special_tokens=False).ids
        row = {"text": text, "ids": ids,
               "roundtrip": plain.decode(ids, skip_special_tokens=False) == text}
        if tokenizer_texts.contains_special(text):
            ids_s = special.encode(text, add_special_tokens=False).ids
            row["ids_special"] = ids_s
            row["roundtrip_special"] = special.decode(ids_s, skip_special_tokens=False) == text
        else:
            # sanity: both modes agree on text without added-token strings
            assert special.encode(text, add_special_tokens=False).ids == ids
        rows.append(row)
    return rows


def check_json(tok_path):
    with open(tok_path, encoding="utf-8") as f:
        j = json.load(f)
    m = j["model"]
    merges = m["merges"]
    fmt = "pairs" if isinstance(merges[0], list) else "strings"
    print(f"tokenizer.json: vocab {len(m['vocab'])} merges {len(merges)} (format: {fmt}, "
          f"first {merges[0]!r}), added {len(j['added_tokens'])}, ignore_merges {m['ignore_merges']}")
    return fmt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real-tokenizer", help="path to Meta's LLaMA-3 tokenizer.json (optional)")
    args = ap.parse_args()

    out_dir = os.path.join(ROOT, "assets", "tiny", "llm")
    os.makedirs(out_dir, exist_ok=True)
    tok = build_tokenizer()
    hf = to_hf(tok, out_dir)
    tok_path = os.path.join(out_dir, "tokenizer.json")
    check_json(tok_path)
    print("len(tokenizer) =", len(hf), "image ids", hf.convert_tokens_to_ids(IMAGE_TOKENS),
          "bos", hf.bos_token_id)

    gdir = os.path.join(ROOT, "tests", "golden", "tokenizer")
    rows = encodings(tok_path)
    write_jsonl(os.path.join(gdir, "encodings.jsonl"), rows)
    print(f"encodings.jsonl: {len(rows)} lines, {sum(not r['roundtrip'] for r in rows)} without roundtrip")

    # Chat-template goldens, produced by the faithful restatement of MetaMorph's code.
    from transformers import AutoTokenizer
    hf2 = AutoTokenizer.from_pretrained(out_dir)  # reload as the reference would
    chat_rows = []
    for msgs in metamorph_template.CHAT_CASES:
        prompt = metamorph_template.get_prompt_llama3(msgs, add_generation_prompt=True)
        ids = metamorph_template.tokenizer_image_token(prompt, hf2)
        chat_rows.append({"messages": msgs, "add_generation_prompt": True, "prompt": prompt, "ids": ids})
    write_jsonl(os.path.join(gdir, "chat.jsonl"), chat_rows)
    img_rows = []
    for msgs in metamorph_template.CHAT_IMAGE_CASES:
        prompt = metamorph_template.get_prompt_llama3(
            metamorph_template.render_image_parts(msgs), add_generation_prompt=True)
        ids = metamorph_template.tokenizer_image_token(prompt, hf2)
        img_rows.append({"messages": msgs, "add_generation_prompt": True, "prompt": prompt,
                         "image_token_index": metamorph_template.IMAGE_TOKEN_INDEX, "ids": ids})
    write_jsonl(os.path.join(gdir, "chat_image.jsonl"), img_rows)
    print(f"chat.jsonl: {len(chat_rows)}, chat_image.jsonl: {len(img_rows)}; first ids {chat_rows[0]['ids'][:4]}")

    if args.real_tokenizer:
        real_rows = encodings(args.real_tokenizer)
        write_jsonl(os.path.join(gdir, "llama3_real", "encodings.jsonl"), real_rows)
        print(f"llama3_real/encodings.jsonl: {len(real_rows)} lines, "
              f"{sum(not r['roundtrip'] for r in real_rows)} without roundtrip")


if __name__ == "__main__":
    main()
