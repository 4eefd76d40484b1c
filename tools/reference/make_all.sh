#!/usr/bin/env bash
# Regenerate every tiny model and golden file written by tools/reference/.
#
#   tools/reference/make_all.sh                  # creates tools/reference/.venv from requirements.txt
#   PYTHON=/path/to/python tools/reference/make_all.sh   # use an existing interpreter
#
# Deterministic: a rerun with the pinned versions rewrites identical files
# (check with `git status`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [ -z "${PYTHON:-}" ]; then
    venv=${VENV:-$here/.venv}
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
    PYTHON=$venv/bin/python
fi
export PYTHON
export PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 \
       OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES="" \
       HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

real=()
if "$here/fetch_llama3_tokenizer.sh" "$tmp/llama3"; then
    real=(--real-tokenizer "$tmp/llama3/tokenizer.json")
else
    echo "make_all: LLaMA-3 tokenizer not available; keeping tests/golden/tokenizer/llama3_real as is" >&2
fi

"$PYTHON" "$here/make_tokenizer.py" "${real[@]}"
"$PYTHON" "$here/make_llama_goldens.py"
"$PYTHON" "$here/make_tiny_vision.py"   # before make_tiny_model.py, which reads its goldens
"$PYTHON" "$here/make_decoder_goldens.py" # before make_tiny_model.py, which lists assets/tiny/decoder
"$PYTHON" "$here/make_tiny_model.py"
"$PYTHON" "$here/make_select_layer_goldens.py" # after make_tiny_model.py: it reads assets/tiny/llm
echo "make_all: done"
