#!/usr/bin/env bash
# Makes BUILD/openai-venv for the OpenAI client tests: Debian's python3 (so its grpcio and
# protobuf stay visible) plus the pinned `openai` client from PyPI. Rebuilt only when the
# requirements change. Usage: openai_venv.sh BUILD_DIR REQUIREMENTS
set -euo pipefail
venv=$1/openai-venv req=$2
if [[ -x $venv/bin/python && -f $venv/.requirements ]] && cmp -s "$req" "$venv/.requirements"; then
  echo "openai venv: up to date ($venv)"
  exit 0
fi
rm -rf "$venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$venv/.requirements"
"$venv/bin/python" -c 'import openai, grpc; print("openai venv: openai", openai.__version__, "grpcio", grpc.__version__)'
