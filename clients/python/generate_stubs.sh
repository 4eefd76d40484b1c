#!/usr/bin/env bash
# Generates the Python gRPC stubs of the MetaMorph API (proto/metamorph.proto, and the
# health and reflection protos beside it) into OUT_DIR (default: metamorph_client/_gen
# next to this script): metamorph_pb2.py (messages) and metamorph_pb2_grpc.py (stubs).
# Uses grpcio-tools when Python has it (pip install grpcio-tools), else protoc with
# grpc_python_plugin (Debian: apt install protobuf-compiler protobuf-compiler-grpc).
# usage: clients/python/generate_stubs.sh [OUT_DIR] [PYTHON]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
out=${1:-$here/metamorph_client/_gen}
py=${2:-python3}
mkdir -p "$out"
protos=(proto/metamorph.proto proto/health.proto proto/reflection.proto)
if "$py" -c 'import grpc_tools.protoc' 2>/dev/null; then
  (cd "$src" && "$py" -m grpc_tools.protoc -I. --python_out="$out" --grpc_python_out="$out" "${protos[@]}")
elif command -v protoc >/dev/null && command -v grpc_python_plugin >/dev/null; then
  (cd "$src" && protoc -I. --python_out="$out" --grpc_python_out="$out" \
    --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" "${protos[@]}")
else
  echo "generate_stubs: need grpcio-tools (pip install grpcio-tools) or protoc + grpc_python_plugin" \
       "(apt install protobuf-compiler protobuf-compiler-grpc)" >&2
  exit 1
fi
# protoc names the modules after their path (proto/metamorph_pb2.py, importing
# "from proto import metamorph_pb2"): make proto/ a package under OUT_DIR
touch "$out/proto/__init__.py"
echo "generate_stubs: wrote $out/proto/{metamorph,health,reflection}_pb2{,_grpc}.py"
