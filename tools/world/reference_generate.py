#!/usr/bin/env python3
"""PyTorch reference images for the 200 held-out generation prompts: the trained world
model (assets/world) answers "Generate an image of {caption}." greedily (the model opens
the image itself; --force-start opens the assistant turn with <image_start> as the
service's image request does), the 64 predicted visual tokens go through the adapter +
UNet (PNDM, CFG with zero negatives) + VAE. Writes OUT/NNNN.png (NNNN = the prompt's
held-out id), OUT/results.jsonl and prints the generated-image attribute accuracy
(tools/world/classify.py).

  python tools/world/reference_generate.py [--n 200] [--steps 50] [--guidance 7.5] [--out DIR]"""
import argparse
import json
import os
import time

import classify
import common
import torch
import world_model
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--force-start", action="store_true")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "tests", "world", "pytorch_gen"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--asset", default=common.ASSET)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = world_model.load(a.asset)
    d = world_model.load_decoder(a.asset)
    tok = m["tok"]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(common.HELDOUT, "gen_prompts.jsonl")) as f:
        prompts = [json.loads(line) for line in f][:a.n]
    tot = {k: [0, 0] for k in ("colour", "shape", "size", "position")}
    t0, rows, n_img = time.time(), [], 0
    start = tok.convert_tokens_to_ids(common.mt.IM_START)
    res_f = open(os.path.join(a.out, "results.jsonl"), "w")
    for p in prompts:
        ids = world_model.generation_prompt_ids(tok, p["caption"])
        if a.force_start:
            ids = ids + [start]
        r = world_model.generate(m, ids, start_in_image_mode=a.force_start)
        row = {"id": p["id"], "caption": p["caption"], "text_ids": r["ids"], "stop": r["stop"],
               "n_images": len(r["images"])}
        if r["images"]:
            n_img += 1
            img = world_model.decode_image(d, r["images"][0], a.steps, a.guidance, seed=p["id"])
            Image.fromarray(img, "RGB").save(os.path.join(a.out, "%04d.png" % p["id"]))
            sc = classify.score(img, p["objects"])
        else:
            sc = classify.score(None, p["objects"]) if False else {k: [0, len(p["objects"])] for k in tot}
        for k, (c, n) in sc.items():
            tot[k][0] += c
            tot[k][1] += n
        row["correct"] = {k: v[0] for k, v in sc.items()}
        rows.append(row)
        res_f.write(json.dumps(row) + "\n")
        res_f.flush()
    res_f.close()
    allc = sum(c for c, _ in tot.values())
    alln = sum(n for _, n in tot.values())
    print(json.dumps({"prompts": len(rows), "with_image": n_img, "attribute_accuracy": allc / alln,
                      **{k: c / n for k, (c, n) in tot.items()}, "steps": a.steps, "guidance": a.guidance,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
