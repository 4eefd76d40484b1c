"""Shared pieces of the world model's training: paths, shapes, the instruction data
(captioning, QA, generation in MetaMorph's chat format), image preprocessing."""
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import world  # noqa: E402
import metamorph_template as mt  # noqa: E402

WORK = os.environ.get("WORLD_WORK", os.path.join(HERE, "work"))   # checkpoints, caches (not committed)
ASSET = os.path.join(ROOT, "assets", "world")
LOGS = os.path.join(HERE, "logs")
HELDOUT = os.path.join(ROOT, "tests", "world", "heldout")

IMG = 126           # SigLIP input side (patch 14 -> 9x9 grid)
N_TOK = 64          # visual tokens (8x8)
VIS_DIM = 64        # SigLIP hidden size = mm_hidden_size = vision_head output
CROSS_DIM = 64      # UNet cross_attention_dim (adapter output)
LATENT = 8

# ---------------------------------------------------------------- instructions
CAPTION_Q = "Describe the image."
GEN_Q = "Generate an image of {caption}."
IMAGE_ANSWER = mt.IM_START + mt.DEFAULT_IMAGE_TOKEN + mt.IM_END   # the assistant's image


def qa_pairs(rec):
    """All question/answer pairs about one image record (besides captioning)."""
    objs = rec["objects"]
    out = [("How many shapes are there?", "one" if len(objs) == 1 else "two")]
    for o in objs:
        same_shape = sum(p["shape"] == o["shape"] for p in objs)
        same_colour = sum(p["colour"] == o["colour"] for p in objs)
        pos = world.POS_WORDS[o["position"]]
        if same_shape == 1:
            out.append(("What colour is the %s?" % o["shape"], o["colour"]))
            out.append(("Where is the %s?" % o["shape"], pos))
        if same_colour == 1:
            out.append(("What shape is the %s one?" % o["colour"], o["shape"]))
            out.append(("Where is the %s shape?" % o["colour"], pos))
        out.append(("Is the %s %s small or large?" % (o["colour"], o["shape"]), o["size"]))
    for side in sorted({o["position"] for o in objs}):
        o = [p for p in objs if p["position"] == side][0]
        out.append(("What is %s?" % world.POS_WORDS[side], "a %s %s %s" % (o["size"], o["colour"], o["shape"])))
    return out


def user_image_text(question):
    """The user's text with one image in front (inference/demo.py)."""
    return mt.IM_START + mt.DEFAULT_IMAGE_TOKEN + mt.IM_END + "\n" + question


def chat(user, assistant=None):
    """MetaMorph prompt string; assistant=None -> generation prompt."""
    msgs = [{"role": "user", "content": user}]
    if assistant is None:
        return mt.get_prompt_llama3(msgs, add_generation_prompt=True)
    msgs.append({"role": "assistant", "content": assistant})
    return mt.get_prompt_llama3(msgs, add_generation_prompt=False)


def corpus_sentences(n=4000, seed=0):
    """Text for the tokenizer: every instruction string and answer of the world."""
    out = []
    for i in range(n):
        rec = world.sample_rng(np.random.default_rng([7, seed, i]))
        out.append(rec["caption"])
        out.append(CAPTION_Q)
        out.append(GEN_Q.format(caption=rec["caption"]))
        for q, a in qa_pairs(rec):
            out.append(q)
            out.append(a)
    return out


# ---------------------------------------------------------------- images
_R = None


def resize_matrix():
    """[126, 64]: PIL's bicubic upscale 64 -> 126 as a matrix (from float 'F' images)."""
    global _R
    if _R is None:
        from PIL import Image
        R = np.zeros((IMG, 64), np.float32)
        for j in range(64):
            e = np.zeros((1, 64), np.float32)
            e[0, j] = 1.0
            R[:, j] = np.asarray(Image.fromarray(e, "F").resize((IMG, 1), Image.BICUBIC))[0]
        _R = torch.from_numpy(R)
    return _R


def pixels(imgs):
    """uint8 [B, 64, 64, 3] -> SigLIP pixel values [B, 3, 126, 126]: bicubic resize as PIL does
    (as a separable matrix product, rounded to uint8; within 1 level of PIL's integer
    arithmetic), rescale 1/255, mean = std = 0.5 (SiglipImageProcessor). Training only;
    reference_captions.py uses the real SiglipImageProcessor."""
    R = resize_matrix()
    x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float()
    x = torch.matmul(x, R.t()).round().clamp(0, 255)  # PIL: horizontal pass first, to uint8
    x = torch.matmul(R, x).round().clamp(0, 255)
    return (x / 255.0 - 0.5) / 0.5


def pixels_exact(imgs):
    from PIL import Image
    out = np.empty((len(imgs), IMG, IMG, 3), np.float32)
    for i, a in enumerate(imgs):
        out[i] = np.asarray(Image.fromarray(a, "RGB").resize((IMG, IMG), Image.BICUBIC), np.float32)
    x = torch.from_numpy(out).permute(0, 3, 1, 2)
    return (x / 255.0 - 0.5) / 0.5


def train_batch(start, n):
    recs, imgs = [], []
    for i in range(start, start + n):
        r, im = world.train_sample(i)
        recs.append(r)
        imgs.append(im)
    return recs, np.stack(imgs)


# ---------------------------------------------------------------- bookkeeping
class Log:
    def __init__(self, name):
        os.makedirs(LOGS, exist_ok=True)
        self.f = open(os.path.join(LOGS, name + ".txt"), "a")
        self.t0 = time.time()

    def __call__(self, msg):
        line = "%s %s" % (time.strftime("%H:%M:%S"), msg)
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def save_ckpt(path, **state):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_ckpt(path):
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=False)
    return None


def cosine_lr(step, total, base, warmup=100):
    import math
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def lr_at(step, total_steps, base, elapsed, minutes, warmup=100):
    """cosine_lr over steps, or over wall time when a budget in minutes is given."""
    if not minutes:
        return cosine_lr(step, total_steps, base, warmup)
    import math
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, elapsed / (minutes * 60))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
