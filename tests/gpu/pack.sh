#!/usr/bin/env bash
# Builds the CUDA test and benchmark programs and the service's LLM processes here
# (nvcc + cuBLAS, no GPU needed) and packs them, with mpiexec and the shared libraries a
# CUDA + PyTorch GPU image lacks (oneDNN, MPICH, gRPC, ZeroMQ, jansson, ...), into one
# compressed file, small enough to travel with the tree. `tests/gpu/run.sh --prebuilt FILE` runs them there without building,
# which spends no GPU-machine time on configuring and compiling.
# Usage: tests/gpu/pack.sh [OUT_FILE (default .gpu/pack.tar.xz)]   (env: MM_GPU_ARCH, default 90)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${1:-$root/.gpu/pack.tar.xz}
build=$root/build-gpupack
arch=${MM_GPU_ARCH:-90}
targets=(test_backend_cuda test_cuda_models llm_gpu decoder_gpu mm-mkmodel mm-coordinator mm-stage mmctl)

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DMM_ASAN_TESTS=OFF >"$build.configure.log" 2>&1 || { tail -30 "$build.configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
bins=("$build/tests/test_backend_cuda" "$build/tests/test_cuda_models" "$build/bench/llm_gpu" "$build/bench/decoder_gpu"
      "$build/tools/mm-mkmodel" "$build/coordinator/mm-coordinator" "$build/worker/mm-stage" "$build/tools/mmctl"
      "$(readlink -f "$(command -v mpiexec)")" "$(command -v hydra_pmi_proxy)")
cp "${bins[@]}" "$stage/bin/"
mv "$stage/bin/$(basename "$(readlink -f "$(command -v mpiexec)")")" "$stage/bin/mpiexec"
# Libraries outside the C runtime and CUDA (the GPU image has those, newer or equal).
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so'
ldd "${bins[@]}" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u | while read -r name path; do
  [[ $name =~ $skip ]] || cp -L "$path" "$stage/lib/$name"
done
mkdir -p "$(dirname "$out")"
tar -cf - -C "$stage" bin lib | xz -T0 -6 >"$out"
echo "pack: $(du -h "$out" | cut -f1) -> $out ($(ls "$stage/lib" | tr '\n' ' '))"
