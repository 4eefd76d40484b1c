#!/usr/bin/env python3
"""The embedded tiny SigLIP (assets/tiny/vision), the test images, and the vision goldens.

Writes
  assets/tiny/vision/config.json, model.safetensors, preprocessor_config.json
      transformers SiglipVisionModel.save_pretrained + SiglipImageProcessor.save_pretrained
  tests/golden/vision/images/*      valid PNG/JPEG test images (odd sizes, every PNG colour
                                    type and bit depth PIL distinguishes, baseline and
                                    progressive JPEG)
  tests/golden/vision/corrupt/*     malformed files the decoder must reject
  tests/golden/vision/golden.json   per image: file, PIL mode, size
  tests/golden/vision/golden.safetensors
      pixels.<name>    [3, S, S]   SiglipImageProcessor output for Image.open(f).convert('RGB')
      rgb.<name>       [h, w, 3]   u8, the convert('RGB') pixels themselves
      features.<name>  [N, D]      SiglipVisionModel hidden_states[-1] (before post_layernorm)
      tokens.<name>    [64, D]     bilinear (align_corners=False) to 8x8, then L2-normalised
      tokens.select<L>.<name> [64, D]  the same from hidden_states[L] (mm_vision_select_layer
                                    L = -2: after the first of the 2 layers; L = 0: the patch
                                    + position embeddings), for SELECT_IMAGES

The tiny SigLIP: hidden 48, 2 layers, 4 heads, MLP 96 (gelu_pytorch_tanh), image 126,
patch 14, so a 9x9 grid: the 9x9 -> 8x8 bilinear reduction is really exercised.
"""

import io
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import metamorph_ref  # noqa: E402
import refutil  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel  # noqa: E402

VISION = os.path.join(ROOT, "assets", "tiny", "vision")
GOLD = os.path.join(ROOT, "tests", "golden", "vision")
N_TOKENS = 64
SIZE = 126
SELECT_LAYERS = (-2, 0)
SELECT_IMAGES = ("rgb_37x23", "baseline_45x33")


def build_siglip(num_hidden_layers=2, seed=7):
    """The tiny SigLIP's shape with num_hidden_layers layers, seeded weights (not saved)."""
    cfg = SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=num_hidden_layers,
                             num_attention_heads=4, num_channels=3, image_size=SIZE, patch_size=14,
                             hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0)
    torch.manual_seed(seed)
    model = SiglipVisionModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                std = 0.2 if "position_embedding" in name else 1.0 / fan_in ** 0.5
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def save_siglip(model, out_dir):
    """Writes model + its SiglipImageProcessor to out_dir; returns them read back."""
    model.save_pretrained(out_dir, safe_serialization=True)
    proc = SiglipImageProcessor(do_resize=True, size={"height": SIZE, "width": SIZE}, resample=3,
                                do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    proc.save_pretrained(out_dir)
    return SiglipVisionModel.from_pretrained(out_dir, dtype=torch.float32).eval(), proc


def make_siglip():
    return save_siglip(build_siglip(), VISION)


# ---------------------------------------------------------------- images

def smooth_rgb(h, w, seed, channels=3):
    """Gradients plus seeded noise: smooth enough that bicubic weights matter, noisy
    enough that every tap does."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = [(x * (37 + 11 * c) + y * (23 + 7 * c)) % 256 for c in range(channels)]
    img = np.stack(base, -1).astype(np.float64) + r.normal(0, 30, (h, w, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


def png_raw(w, h, bit_depth, color_type, rows, interlace=0):
    """A minimal PNG encoder for what PIL cannot write (16-bit RGB): filter 0 rows."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    raw = b"".join(b"\0" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def save(im, **kw):
    b = io.BytesIO()
    im.save(b, **kw)
    return b.getvalue()


def test_images():
    imgs = {}
    imgs["rgb_37x23.png"] = save(Image.fromarray(smooth_rgb(23, 37, 1)), format="PNG")
    imgs["gray_50x31.png"] = save(Image.fromarray(smooth_rgb(31, 50, 2, 1)[..., 0], "L"), format="PNG")
    rgba = smooth_rgb(40, 40, 3, 4)
    imgs["rgba_40x40.png"] = save(Image.fromarray(rgba, "RGBA"), format="PNG")
    imgs["graya_30x20.png"] = save(Image.fromarray(smooth_rgb(20, 30, 4, 2), "LA"), format="PNG")
    pal = Image.fromarray(smooth_rgb(29, 33, 5)).quantize(colors=13, method=Image.Quantize.MEDIANCUT)
    pal.info["transparency"] = 3
    imgs["palette4_33x29.png"] = save(pal, format="PNG", bits=4, transparency=3)
    g16 = (np.random.default_rng(6).integers(0, 400, (19, 21))).astype(np.uint16)
    imgs["gray16_21x19.png"] = save(Image.fromarray(g16), format="PNG")
    rgb16 = np.random.default_rng(7).integers(0, 65536, (26, 17, 3)).astype(">u2")
    imgs["rgb16_17x26.png"] = png_raw(17, 26, 16, 2, [row.tobytes() for row in rgb16])
    bw = (smooth_rgb(15, 22, 8, 1)[..., 0] > 128)
    imgs["bw1_22x15.png"] = save(Image.fromarray(bw), format="PNG")
    imgs["rgb_300x211.png"] = save(Image.fromarray(smooth_rgb(211, 300, 9)), format="PNG")
    imgs["baseline_45x33.jpg"] = save(Image.fromarray(smooth_rgb(33, 45, 10)), format="JPEG", quality=90)
    imgs["progressive_161x97.jpg"] = save(Image.fromarray(smooth_rgb(97, 161, 11)), format="JPEG",
                                          quality=85, progressive=True)
    imgs["gray_29x35.jpg"] = save(Image.fromarray(smooth_rgb(35, 29, 12, 1)[..., 0], "L"), format="JPEG")
    imgs["exact_126x126.png"] = save(Image.fromarray(smooth_rgb(126, 126, 13)), format="PNG")
    return imgs


def corrupt_images(good_png, good_jpg):
    out = {}
    out["truncated.png"] = good_png[: len(good_png) // 2]
    b = bytearray(good_png)
    idat = b.find(b"IDAT")
    b[idat + 10] ^= 0x55  # inside the compressed data, CRC left as it was
    out["bad_crc.png"] = bytes(b)
    # zero width with a correct IHDR CRC, so the width check (not the CRC) must catch it
    ihdr = struct.pack(">IIBBBBB", 0, 23, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xffffffff)
    out["zero_width.png"] = good_png[:16] + ihdr + crc + good_png[33:]
    tall = np.zeros((100000, 1), np.uint8)
    out["tall_1x100000.png"] = save(Image.fromarray(tall, "L"), format="PNG")
    out["truncated.jpg"] = good_jpg[: len(good_jpg) * 2 // 3]
    # scan data replaced by seeded garbage (0xFF bytes kept out so the marker structure stays)
    j = bytearray(good_jpg)
    sos = j.find(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", j[sos + 2:sos + 4])[0]
    end = j.rfind(b"\xff\xd9")
    r = np.random.default_rng(99)
    j[start:end] = bytes(int(v) for v in r.integers(0, 255, end - start))
    out["garbage_scan.jpg"] = bytes(j)
    out["empty.png"] = b""
    out["not_an_image.txt"] = b"hello, this is not an image\n"
    return out


def main():
    refutil.deterministic(0)
    siglip, proc = make_siglip()
    imgs = test_images()
    os.makedirs(os.path.join(GOLD, "images"), exist_ok=True)
    os.makedirs(os.path.join(GOLD, "corrupt"), exist_ok=True)
    for name, data in imgs.items():
        with open(os.path.join(GOLD, "images", name), "wb") as f:
            f.write(data)
    for name, data in corrupt_images(imgs["rgb_37x23.png"], imgs["baseline_45x33.jpg"]).items():
        with open(os.path.join(GOLD, "corrupt", name), "wb") as f:
            f.write(data)

    tensors, meta = {}, []
    for name in sorted(imgs):
        im = Image.open(os.path.join(GOLD, "images", name))
        mode = im.mode
        rgb = im.convert("RGB")
        pix = proc(images=rgb, return_tensors="pt")["pixel_values"]
        feats, toks = metamorph_ref.vision_tower(siglip, pix, N_TOKENS)
        key = name.rsplit(".", 1)[0]
        tensors[f"rgb.{key}"] = torch.from_numpy(np.array(rgb)).contiguous()
        tensors[f"pixels.{key}"] = pix[0].contiguous()
        tensors[f"features.{key}"] = feats[0].contiguous()
        tensors[f"tokens.{key}"] = toks[0].contiguous()
        if key in SELECT_IMAGES:
            for layer in SELECT_LAYERS:
                _, sel = metamorph_ref.vision_tower(siglip, pix, N_TOKENS, select_layer=layer)
                tensors[f"tokens.select{layer}.{key}"] = sel[0].contiguous()
        meta.append({"name": key, "file": "images/" + name, "pil_mode": mode, "width": rgb.width,
                     "height": rgb.height})
    save_file(tensors, os.path.join(GOLD, "golden.safetensors"), metadata={"format": "pt"})
    refutil.write_json(os.path.join(GOLD, "golden.json"), {
        "image_size": SIZE, "grid": SIZE // 14, "n_tokens": N_TOKENS, "hidden": 48,
        "select_layers": list(SELECT_LAYERS), "select_images": list(SELECT_IMAGES),
        "pillow": Image.__version__, "images": meta,
        "corrupt": sorted(corrupt_images(imgs["rgb_37x23.png"], imgs["baseline_45x33.jpg"]))})
    print("vision: images", [m["name"] + ":" + m["pil_mode"] for m in meta])


if __name__ == "__main__":
    main()
