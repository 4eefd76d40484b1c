#!/usr/bin/env python3
"""Calls a running MetaMorph service from Python.

    clients/python/generate_stubs.sh                       # once: the gRPC stubs
    python3 clients/python/example.py 127.0.0.1:50051 [photo.jpg]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from metamorph_client import Client  # noqa: E402

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
with Client(target) as c:
    r = c.generate("Describe a cat in one sentence.", max_tokens=48)
    print(f"generate: {r.text!r} ({r.completion_tokens} tokens, {r.finish_reason}, ttft {r.ttft_ms:.1f} ms)")
    print("stream: ", end="")
    for piece in c.stream("Tell a very short story.", max_tokens=48):
        print(piece, end="", flush=True)
    print()
    if len(sys.argv) > 2:
        with open(sys.argv[2], "rb") as f:
            print("caption:", c.generate("What is in this image?", images=[f.read()], max_tokens=48).text)
    img = c.generate_image("A red cat on a sofa.", steps=20, seed=1, max_tokens=70)
    if img.png:
        with open("example.png", "wb") as f:
            f.write(img.png)
        print(f"generate_image: example.png ({len(img.png)} bytes)")
    else:
        print(f"generate_image: {len(img.images)} image(s) as visual tokens (no decoder pool serves PNGs)")
