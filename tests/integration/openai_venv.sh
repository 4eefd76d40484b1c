#!/usr/bin/env bash
# Makes BUILD/openai-venv for the OpenAI client tests: Debian's python3 (so its grpcio and
# protobuf stay visible) plus the pinned `openai` client from PyPI. Rebuilt only when the
# requirements change. Exits 77 (the tests report "skipped", visibly) when PyPI cannot be
# reached at all (no network, or TLS interception without this machine's CA); any other
# failure is an error. Usage: openai_venv.sh BUILD_DIR REQUIREMENTS
set -euo pipefail
venv=$1/openai-venv req=$2
if [[ -x $venv/bin/python && -f $venv/.requirements ]] && cmp -s "$req" "$venv/.requirements"; then
  echo "openai venv: up to date ($venv)"
  exit 0
fi
rm -rf "$venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" > "$venv.log" 2>&1; then
  cat "$venv.log"
  rm -rf "$venv"
  if grep -q "SSLError\|CERTIFICATE_VERIFY_FAILED\|NewConnectionError\|Temporary failure in name resolution\|Network is unreachable\|ProxyError" "$venv.log"; then
    echo "openai venv: skipped: PyPI cannot be reached from here (see above)"
    exit 77
  fi
  exit 1
fi
cp "$req" "$venv/.requirements"
"$venv/bin/python" -c 'import openai, grpc; print("openai venv: openai", openai.__version__, "grpcio", grpc.__version__)'
