#!/usr/bin/env bash
# Quick start on a fresh Debian machine: installs what is missing, builds, and runs the
# embedded tiny MetaMorph model (assets/tiny, random weights: its words are gibberish and
# its pictures noise, by design). It asks one understanding question about a bundled
# image and one generation request, prints the answer and where the image was written.
# (This drives the single-process tools; deploy/launch.sh starts the gRPC service.)
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/deps.sh
mm_install_deps
mm_build build
out=${MM_QUICKSTART_OUT:-$(mktemp -d /tmp/metamorph-quickstart-XXXXXX)}
mkdir -p "$out"
image=assets/images/example.png

echo
echo "== understanding: \"What is in this image?\" + $image"
./build/tools/mm-run --model assets/tiny --image "$image" --prompt "What is in this image?" --max-tokens 24

echo
echo "== generation: \"Draw a cat.\""
./build/tools/mm-run --model assets/tiny --prompt "Draw a cat." --generate-image --max-tokens 80 \
    --visual-tokens-out "$out/cat_tokens.safetensors"
./build/tools/mm-decode --model assets/tiny --tokens "$out/cat_tokens.safetensors" --steps 20 \
    --sampler dpmpp2m --seed 0 --out "$out/cat.png"
echo
echo "== image written to $out/cat.png"
