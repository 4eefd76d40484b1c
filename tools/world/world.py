"""The synthetic shapes world of issue 16 (seeded, deterministic).

64x64 RGB images with one or two filled shapes (hard edges, exact colours) on a
plain or two-tone grey background, each with a caption from a small grammar.

  python tools/world/world.py heldout [--out tests/world/heldout]   # 500 images + labels + 200 gen prompts
  python tools/world/world.py show N [--split train|heldout]          # print N records
  python tools/world/world.py png SPLIT INDEX OUT.png                 # write one image

As a module: sample(split, index) -> record (dict), render(record) -> uint8 [64,64,3].

Contract (tests/world/heldout/labels.jsonl, one line per image):
  {"id", "file", "caption", "background", "split", "objects": [{"shape", "colour",
   "size", "position", "centre": [cx, cy], "extent", "bbox": [x0, y0, x1, y1]}]}
  background: [v] for plain (R=G=B=v), [a, b] for two-tone; split "none" (plain),
  "vertical" (left half a, right half b: columns 0..31 / 32..63) or "horizontal"
  (top half a, bottom half b: rows 0..31 / 32..63). bbox is pixel-inclusive at x0/y0
  and exclusive at x1/y1 (x1 - x0 = extent); every shape pixel lies inside it and
  has exactly the shape's colour.

Held-out vs training: the held-out split draws image i from
numpy.random.default_rng([HELDOUT_KEY, i]) and training image i from
default_rng([TRAIN_KEY, i]) (independent seed streams); on top of that, training
skips any sample whose rendered pixels equal a held-out image (train_stream()).
Captions/layouts are NOT held out (the grammar only has 240 one-shape captions),
so the held-out split measures generalisation to unseen images, not to unseen
attribute combinations.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

SIZE = 64
GREYS = [30, 90, 160, 220]
GREY_JITTER = 5
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
SHAPES = ["circle", "square", "triangle", "cross"]
SIZES = {"small": (12, 14), "large": (22, 24)}
POSITIONS = {"left": (16, 32), "right": (48, 32), "top": (32, 16),
             "bottom": (32, 48), "centre": (32, 32)}
POS_JITTER = 2
POS_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top",
             "bottom": "at the bottom", "centre": "in the centre"}
PAIRS = [("left", "right"), ("top", "bottom")]

HELDOUT_KEY = 16_500
TRAIN_KEY = 16_001
N_HELDOUT = 500
N_GEN_PROMPTS = 200


def phrase(o):
    return "a %s %s %s %s" % (o["size"], o["colour"], o["shape"], POS_WORDS[o["position"]])


def caption(objects):
    return " and ".join(phrase(o) for o in objects)


def _object(rng, position):
    size = ["small", "large"][rng.integers(2)]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    lo, hi = SIZES[size]
    extent = int(rng.integers(lo, hi + 1))
    px, py = POSITIONS[position]
    cx = px + int(rng.integers(-POS_JITTER, POS_JITTER + 1))
    cy = py + int(rng.integers(-POS_JITTER, POS_JITTER + 1))
    x0 = cx - extent // 2
    y0 = cy - extent // 2
    return {"shape": shape, "colour": colour, "size": size, "position": position,
            "centre": [cx, cy], "extent": extent, "bbox": [x0, y0, x0 + extent, y0 + extent]}


def sample_rng(rng):
    """One record drawn from rng (without id/file)."""
    kind = int(rng.integers(3))  # 0 plain, 1 vertical split, 2 horizontal split
    if kind == 0:
        background = [GREYS[rng.integers(4)] + int(rng.integers(-GREY_JITTER, GREY_JITTER + 1))]
        split = "none"
    else:
        a, b = rng.choice(4, size=2, replace=False)
        background = [GREYS[a] + int(rng.integers(-GREY_JITTER, GREY_JITTER + 1)),
                      GREYS[b] + int(rng.integers(-GREY_JITTER, GREY_JITTER + 1))]
        split = "vertical" if kind == 1 else "horizontal"
    if rng.integers(2) == 0:
        pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
        objects = [_object(rng, pos)]
    else:
        pair = PAIRS[rng.integers(2)]
        while True:
            objects = [_object(rng, pair[0]), _object(rng, pair[1])]
            if (objects[0]["colour"], objects[0]["shape"]) != (objects[1]["colour"], objects[1]["shape"]):
                break
    return {"caption": caption(objects), "background": background, "split": split,
            "objects": objects}


def sample(split, index):
    key = HELDOUT_KEY if split == "heldout" else TRAIN_KEY
    rec = sample_rng(np.random.default_rng([key, int(index)]))
    rec["id"] = int(index)
    return rec


def shape_mask(shape, x0, y0, extent):
    """Boolean [SIZE, SIZE] mask of a filled shape in bbox [x0, x0+extent) x [y0, y0+extent)."""
    e = float(extent)
    v, u = np.mgrid[0:extent, 0:extent] + 0.5  # pixel centres, relative to the bbox corner
    if shape == "square":
        m = np.ones((extent, extent), bool)
    elif shape == "circle":
        m = (u - e / 2) ** 2 + (v - e / 2) ** 2 <= (e / 2) ** 2
    elif shape == "triangle":
        # apex at the top middle, base along the bottom edge
        m = np.abs(u - e / 2) <= (v / e) * (e / 2)
    elif shape == "cross":
        w = round(e / 3)
        a = (extent - w) // 2
        m = ((u >= a) & (u < a + w)) | ((v >= a) & (v < a + w))
    else:
        raise ValueError(shape)
    full = np.zeros((SIZE + 2 * extent, SIZE + 2 * extent), bool)
    full[y0 + extent:y0 + 2 * extent, x0 + extent:x0 + 2 * extent] = m
    return full[extent:extent + SIZE, extent:extent + SIZE]


def render(rec):
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    bg = rec["background"]
    if rec["split"] == "none":
        img[:] = bg[0]
    elif rec["split"] == "vertical":
        img[:, :SIZE // 2] = bg[0]
        img[:, SIZE // 2:] = bg[1]
    else:
        img[:SIZE // 2] = bg[0]
        img[SIZE // 2:] = bg[1]
    for o in rec["objects"]:
        x0, y0, _, _ = o["bbox"]
        img[shape_mask(o["shape"], x0, y0, o["extent"])] = COLOURS[o["colour"]]
    return img


def image_hash(img):
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


_HELDOUT_HASHES = None


def heldout_hashes():
    global _HELDOUT_HASHES
    if _HELDOUT_HASHES is None:
        _HELDOUT_HASHES = {image_hash(render(sample("heldout", i))) for i in range(N_HELDOUT)}
    return _HELDOUT_HASHES


def train_sample(index):
    """Training record + image; index i uses seed stream [TRAIN_KEY, i]; a draw that
    renders exactly like a held-out image is replaced by the stream [TRAIN_KEY, i, k]."""
    hh = heldout_hashes()
    rec = sample("train", index)
    img = render(rec)
    k = 0
    while image_hash(img) in hh:
        k += 1
        rec = sample_rng(np.random.default_rng([TRAIN_KEY, int(index), k]))
        rec["id"] = int(index)
        img = render(rec)
    return rec, img


def gen_prompt_ids():
    """The 200 held-out generation prompts: the first 100 one-shape and the first 100
    two-shape held-out records (by id)."""
    one, two = [], []
    for i in range(N_HELDOUT):
        r = sample("heldout", i)
        (one if len(r["objects"]) == 1 else two).append(i)
    return sorted(one[:N_GEN_PROMPTS // 2] + two[:N_GEN_PROMPTS // 2])


def write_heldout(out):
    from PIL import Image
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "labels.jsonl"), "w") as f:
        for i in range(N_HELDOUT):
            rec = sample("heldout", i)
            rec["file"] = "%04d.png" % i
            Image.fromarray(render(rec), "RGB").save(os.path.join(out, rec["file"]))
            line = {"id": i, "file": rec["file"], "caption": rec["caption"],
                    "background": rec["background"], "split": rec["split"],
                    "objects": rec["objects"]}
            f.write(json.dumps(line) + "\n")
    with open(os.path.join(out, "gen_prompts.jsonl"), "w") as f:
        for i in gen_prompt_ids():
            rec = sample("heldout", i)
            f.write(json.dumps({"id": i, "caption": rec["caption"],
                                "objects": rec["objects"]}) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("heldout")
    h.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "world", "heldout"))
    s = sub.add_parser("show")
    s.add_argument("n", type=int)
    s.add_argument("--split", default="train", choices=["train", "heldout"])
    p = sub.add_parser("png")
    p.add_argument("split", choices=["train", "heldout"])
    p.add_argument("index", type=int)
    p.add_argument("out")
    a = ap.parse_args(argv)
    if a.cmd == "heldout":
        write_heldout(os.path.normpath(a.out))
    elif a.cmd == "show":
        for i in range(a.n):
            rec = train_sample(i)[0] if a.split == "train" else sample("heldout", i)
            print(json.dumps(rec))
    else:
        from PIL import Image
        rec = train_sample(a.index)[0] if a.split == "train" else sample("heldout", a.index)
        Image.fromarray(render(rec), "RGB").save(a.out)


if __name__ == "__main__":
    main()
