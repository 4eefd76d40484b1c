#!/usr/bin/env bash
# Quick start on a fresh Debian machine: installs what is missing, builds, and runs the
# embedded tiny MetaMorph model (assets/tiny, random weights: the text is gibberish by
# design). Until the service lands this drives mm-run, the whole model in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/deps.sh
mm_install_deps
mm_build build
prompt=${1:-"Describe a cat in one sentence."}
echo
echo "== understanding request (text) to the tiny model: $prompt"
./build/tools/mm-run --model assets/tiny --prompt "$prompt" --max-tokens 48
echo "== done. Image generation arrives with the visual-path and decoder work."
