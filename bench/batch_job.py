#!/usr/bin/env python3
"""bench/batch's job file: N lines for `mmctl batch` (DIR/job.jsonl), every K-th line a
generation (a few diffusion steps) and the rest captions, each caption of its own image --
the coordinator caches embeddings by the image's hash, so a repeated image would skip the
encoder. The images are small crops of one PNG cut at different offsets (standard library
only: no Python imaging package is needed). Prints the job's settings as one JSON object."""
import argparse
import hashlib
import json
import os
import struct
import sys
import zlib


def fail(msg):
    sys.exit(f"batch_job: {msg}")


def read_png(path):
    """8-bit RGB/RGBA, non-interlaced PNG -> (width, height, bytes per pixel, rows)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{path} is not a PNG")
    pos, idat, hdr = 8, [], None
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    if not hdr or not idat:
        fail(f"{path}: no IHDR or IDAT chunk")
    w, h, depth, color, _, _, interlace = hdr
    if depth != 8 or color not in (2, 6) or interlace:
        fail(f"{path}: only 8-bit non-interlaced RGB/RGBA PNGs are supported")
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(b"".join(idat)), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            elif ftype != 0:
                fail(f"{path}: bad filter type {ftype}")
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def png_bytes(w, h, bpp, rows):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2 if bpp == 3 else 6, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + r for r in rows), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", required=True, help="PNG to cut the images from")
    ap.add_argument("--dir", required=True, help="writes DIR/job.jsonl and DIR/images/")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--generate-every", type=int, default=5, help="every K-th line is a generation")
    ap.add_argument("--steps", type=int, default=2, help="diffusion steps of a generation")
    ap.add_argument("--caption-tokens", type=int, default=8)
    ap.add_argument("--generate-tokens", type=int, default=66, help="64 visual tokens, then text")
    ap.add_argument("--size", type=int, default=64, help="side of the square image crops")
    a = ap.parse_args()
    if min(a.lines, a.generate_every, a.steps, a.size) < 1:
        fail("--lines, --generate-every, --steps and --size must be >= 1")
    w, h, bpp, rows = read_png(a.source)
    if a.size > w or a.size > h:
        fail(f"--size {a.size} is larger than {a.source} ({w}x{h})")
    nx, ny = w - a.size + 1, h - a.size + 1
    os.makedirs(os.path.join(a.dir, "images"), exist_ok=True)
    seen = set()
    with open(os.path.join(a.dir, "job.jsonl"), "w") as job:
        for i in range(a.lines):
            if i % a.generate_every == a.generate_every - 1:
                line = {"id": f"g{i}", "task": "generate", "prompt": f"Draw picture number {i}.",
                        "max_tokens": a.generate_tokens, "steps": a.steps, "image_seed": i}
            else:
                k = len(seen)
                x, y = (k * 37) % nx, (k * 37 // nx * 11 + k) % ny  # spread the crops over the picture
                png = png_bytes(a.size, a.size, bpp, [row[x * bpp:(x + a.size) * bpp] for row in rows[y:y + a.size]])
                digest = hashlib.blake2b(png).digest()
                if digest in seen:
                    fail(f"crop {k} at ({x}, {y}) repeats an earlier image; try another --size")
                seen.add(digest)
                name = f"images/{k}.png"
                with open(os.path.join(a.dir, name), "wb") as f:
                    f.write(png)
                line = {"id": f"c{i}", "task": "caption", "prompt": "Describe the image.", "images": [name],
                        "max_tokens": a.caption_tokens}
            job.write(json.dumps(line) + "\n")
    n_gen = a.lines // a.generate_every
    print(json.dumps({"lines": a.lines, "captions": a.lines - n_gen, "generations": n_gen, "steps": a.steps,
                      "caption_max_tokens": a.caption_tokens, "generate_max_tokens": a.generate_tokens,
                      "image_size": a.size}))

if __name__ == "__main__":
    main()
