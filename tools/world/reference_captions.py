#!/usr/bin/env python3
"""PyTorch reference captions of the 500 held-out images: the trained world model
(assets/world) through transformers + tools/reference/metamorph_ref.py semantics,
SiglipImageProcessor on the PNG files, the service's captioning prompt, greedy.
Writes tests/world/heldout/pytorch_captions.jsonl ({"id", "caption"}) and prints the
caption attribute accuracy (see tools/world/README.md).

  python tools/world/reference_captions.py [--n 500] [--out FILE]"""
import argparse
import json
import os
import time

import common
import torch
import world_model
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", default=os.path.join(common.HELDOUT, "pytorch_captions.jsonl"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--asset", default=common.ASSET)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = world_model.load(a.asset)
    tok = m["tok"]
    prompt = world_model.caption_prompt_ids(tok)
    with open(os.path.join(common.HELDOUT, "labels.jsonl")) as f:
        labels = [json.loads(line) for line in f][:a.n]
    tot = {k: [0, 0] for k in world_model.ATTRS}
    exact, rows, t0 = 0, [], time.time()
    for i in range(0, len(labels), 50):
        chunk = labels[i:i + 50]
        toks = world_model.image_tokens(m, [Image.open(os.path.join(common.HELDOUT, r["file"])) for r in chunk])
        for r, t in zip(chunk, toks):
            ids = world_model.greedy_text(m, prompt, [t])
            text = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            rows.append({"id": r["id"], "caption": text})
            exact += text == r["caption"]
            for k, (c, n) in world_model.score(text, r["objects"]).items():
                tot[k][0] += c
                tot[k][1] += n
    with open(a.out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    allc = sum(c for c, _ in tot.values())
    alln = sum(n for _, n in tot.values())
    res = {"images": len(rows), "exact_caption": exact / len(rows),
           "attribute_accuracy": allc / alln,
           **{k: c / n for k, (c, n) in tot.items()}, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
