#!/usr/bin/env bash
# One-call GPU check: on a GPU machine without network that has CUDA (nvcc, cuBLAS),
# PyTorch and transformers but none of our Debian libraries, unpacks the .debs that
# tests/gpu/fetch-debs.sh downloaded (tests/gpu/debs/) into a private prefix, builds
# the CUDA targets, runs every CUDA test and benchmark, and writes a JSON summary
# (default build-gpu/gpu-check/summary.json). Meant to finish well under 8 minutes.
# Usage: tests/gpu/run.sh [--build-only] [--layers N]   (env: MM_GPU_OUT, MM_GPU_BUILD)
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${MM_GPU_BUILD:-$root/build-gpu}
out=${MM_GPU_OUT:-$build/gpu-check}
prefix=$build/prefix
build_only=0
layers=32
while (($#)); do
  case $1 in
    --build-only) build_only=1 ;;
    --layers) layers=$2; shift ;;
    *) echo "usage: $0 [--build-only] [--layers N]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
t_start=$(date +%s)
log() { echo "[gpu-check +$(( $(date +%s) - t_start ))s] $*"; }
step_rc=()

# ---- 1. private prefix from the .debs (no root, nothing installed) ----
if compgen -G "tests/gpu/debs/*.deb" >/dev/null && [[ ! -f $prefix/.unpacked ]]; then
  log "unpacking $(ls tests/gpu/debs/*.deb | wc -l) .debs into $prefix"
  mkdir -p "$prefix"
  for f in tests/gpu/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$f" "$prefix"
    else (tmp=$(mktemp -d) && cd "$tmp" && ar x "$root/$f" && tar -xf data.tar.* -C "$prefix" && rm -rf "$tmp"); fi
  done
  # .pc files and absolute symlinks point into /usr: point them into the prefix
  find "$prefix" -name '*.pc' -exec sed -i "s#=/usr#=$prefix/usr#g; s#-I/usr/#-I$prefix/usr/#g; s#-L/usr/#-L$prefix/usr/#g" {} +
  find "$prefix" -type l | while read -r l; do
    t=$(readlink "$l")
    [[ $t == /* && -e $prefix$t ]] && ln -sfn "$prefix$t" "$l"
  done
  touch "$prefix/.unpacked"
fi
ml=$prefix/usr/lib/x86_64-linux-gnu
cmake_extra=()
if [[ -d $prefix/usr ]]; then
  export PATH=$prefix/usr/bin:$PATH
  export LD_LIBRARY_PATH=$ml:$ml/mpich/lib:${LD_LIBRARY_PATH:-}
  export PKG_CONFIG_PATH=$ml/pkgconfig:$prefix/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}
  cmake_extra+=(-DCMAKE_PREFIX_PATH="$prefix/usr")
  [[ -x $prefix/usr/bin/pkgconf ]] && cmake_extra+=(-DPKG_CONFIG_EXECUTABLE="$prefix/usr/bin/pkgconf")
  # MPICH without its compiler wrapper (whose paths say /usr)
  if [[ -f $ml/libmpich.so ]]; then
    cmake_extra+=(-DMPI_C_LIB_NAMES=mpich -DMPI_mpich_LIBRARY="$ml/libmpich.so"
                  -DMPI_C_HEADER_DIR="$prefix/usr/include/x86_64-linux-gnu/mpich" -DMPI_C_COMPILER=MPI_C_COMPILER-NOTFOUND)
  fi
fi
# NCCL: the toolkit's, or the one that comes with PyTorch's wheels
if [[ -z ${NCCL_HOME:-} ]]; then
  nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null || true)
  [[ -n $nccl ]] && export NCCL_HOME=$nccl && export LD_LIBRARY_PATH=$nccl/lib:$LD_LIBRARY_PATH
  [[ -n $nccl && ! -e $nccl/lib/libnccl.so ]] && ln -sf libnccl.so.2 "$nccl/lib/libnccl.so" 2>/dev/null
fi
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
arch=${arch:-90}

# ---- 2. configure and build the CUDA targets ----
log "configure (sm_$arch)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DMM_ASAN_TESTS=OFF "${cmake_extra[@]}" >"$out/configure.log" 2>&1
cfg_rc=$?
targets=(test_backend_cuda test_cuda_models llm_gpu mm-mkmodel mm-stage)
build_rc=1
if ((cfg_rc == 0)); then
  log "build ${targets[*]}"
  cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >"$out/build.log" 2>&1
  build_rc=$?
fi
log "configure rc=$cfg_rc build rc=$build_rc (logs in $out)"
((cfg_rc || build_rc)) && tail -30 "$out/configure.log" "$out/build.log"

# ---- 3. tests and benchmarks ----
tests_rc=-1 bench_rc=-1 torch_rc=-1
if ((build_only == 0 && build_rc == 0)); then
  log "CUDA tests"
  (cd "$build" && timeout 300 ctest -R 'cuda' --output-on-failure) >"$out/ctest.log" 2>&1
  tests_rc=$?
  tail -5 "$out/ctest.log"
  log "bench/llm_gpu (layers $layers)"
  timeout 300 "$build/bench/llm_gpu" --workdir "$build/models" --layers "$layers" >"$out/llm_gpu.json" 2>"$out/llm_gpu.log"
  bench_rc=$?
  cat "$out/llm_gpu.json"
  log "bench/llm_torch.py (PyTorch + transformers baseline)"
  timeout 240 python3 bench/llm_torch.py --layers "$layers" >"$out/llm_torch.json" 2>"$out/llm_torch.log"
  torch_rc=$?
fi

# ---- 4. summary ----
python3 - "$out" "$cfg_rc" "$build_rc" "$tests_rc" "$bench_rc" "$torch_rc" "$t_start" <<'PY'
import json, os, re, subprocess, sys, time
out, cfg, bld, tst, bench, torch_rc, t0 = sys.argv[1], *map(int, sys.argv[2:])
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception as e:
        return {"error": str(e)}
def smi(q):
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip()
    except Exception:
        return None
tests = {}
try:
    for line in open(os.path.join(out, "ctest.log")):
        m = re.search(r"Test +#\d+: (\S+) \.+\** *(Passed|Failed|Not Run|\*\*\*Failed|Skipped|\*\*\*Skipped)", line)
        if m: tests[m.group(1)] = m.group(2).strip("*")
except OSError:
    pass
ours, base = load("llm_gpu.json"), load("llm_torch.json")
ratio = {}
for k in ("1", "8", "64", "256"):
    try: ratio["decode_b" + k] = ours["decode_tokens_per_s"][k] / base["decode_tokens_per_s"][k]
    except Exception: pass
try: ratio["prefill_2048"] = ours["prefill_2048_tokens_per_s"] / base["prefill_2048_tokens_per_s"]
except Exception: pass
s = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": smi("name"), "driver": smi("driver_version"),
     "wall_s": int(time.time()) - t0, "rc": {"configure": cfg, "build": bld, "tests": tst, "llm_gpu": bench,
     "llm_torch": torch_rc}, "tests": tests, "llm_gpu": ours, "llm_torch": base, "ours_over_torch": ratio,
     "targets": {"decode_b1_fraction_of_copy_bandwidth": 0.85, "prefill_fraction_of_gemm_peak": 0.70}}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(s, f, indent=1)
print(json.dumps({k: s[k] for k in ("device", "wall_s", "rc", "tests", "ours_over_torch")}, indent=1))
PY
log "summary: $out/summary.json"
((cfg_rc == 0 && build_rc == 0 && (build_only == 1 || tests_rc == 0)))
