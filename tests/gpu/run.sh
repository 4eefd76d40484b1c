#!/usr/bin/env bash
# One-call GPU check: on a GPU machine without network that has CUDA (nvcc, cuBLAS),
# PyTorch and transformers but none of our Debian libraries, unpacks the .debs that
# tests/gpu/fetch-debs.sh downloaded (tests/gpu/debs/) into a private prefix, builds
# the CUDA targets, runs every CUDA test and benchmark, and writes a JSON summary
# (default build-gpu/gpu-check/summary.json). Meant to finish well under 8 minutes.
# Also runs the service itself with its stage on the GPU (tests/gpu/service_check.sh).
# With --prebuilt FILE (made here by tests/gpu/pack.sh) it builds nothing: it unpacks
# the programs and the libraries they need, and runs them; this is the cheap way to
# spend a short GPU lease.
# Usage: tests/gpu/run.sh [--build-only] [--prebuilt FILE] [--layers N]   (env: MM_GPU_OUT, MM_GPU_BUILD)
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${MM_GPU_BUILD:-$root/build-gpu}
out=${MM_GPU_OUT:-$build/gpu-check}
prefix=$build/prefix
build_only=0
prebuilt=""
layers=32
while (($#)); do
  case $1 in
    --build-only) build_only=1 ;;
    --layers) layers=$2; shift ;;
    --prebuilt) prebuilt=$(realpath "$2"); shift ;;
    *) echo "usage: $0 [--build-only] [--prebuilt FILE] [--layers N]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
t_start=$(date +%s)
log() { echo "[gpu-check +$(( $(date +%s) - t_start ))s] $*"; }

# ---- 1+2. programs: unpacked from a pack, or built from the .debs' private prefix ----
# Our programs run with ours_ld (the pack's or prefix's libraries first); Python keeps
# the machine's own library path, so torch never meets our older libcrypto or libffi.
orig_ld=${LD_LIBRARY_PATH:-}
ours_ld=$orig_ld
ours() { LD_LIBRARY_PATH=$ours_ld "$@"; }
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
arch=${arch:-90}
cfg_rc=0 build_rc=0
if [[ -n $prebuilt ]]; then
  pack=$build/pack
  log "unpacking $prebuilt into $pack"
  rm -rf "$pack" && mkdir -p "$pack"
  tar -xf "$prebuilt" -C "$pack" 2>/dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$prebuilt" "$pack" || build_rc=1
  bin_tests=$pack/bin bin_bench=$pack/bin bin_tools=$pack/bin
  ours_ld=$pack/lib${orig_ld:+:$orig_ld}
  # cuBLAS 13: the toolkit's, else the one that comes with PyTorch's wheels
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           "$(python3 -c 'import nvidia.cublas; print(nvidia.cublas.__path__[0])' 2>/dev/null)/lib"; do
    [[ -e $d/libcublas.so.13 ]] && ours_ld=$ours_ld:$d && break
  done
  # NCCL (mm-stage --backend cuda): the toolkit's, else the one of PyTorch's wheels
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib \
           "$(python3 -c 'import nvidia.nccl; print(nvidia.nccl.__path__[0])' 2>/dev/null)/lib"; do
    [[ -e $d/libnccl.so.2 ]] && ours_ld=$ours_ld:$d && break
  done
  ours ldd "$pack/bin/test_backend_cuda" "$pack/bin/mm-stage" | grep "not found" && build_rc=1
else
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
    export LD_LIBRARY_PATH=$ml:$ml/mpich/lib${orig_ld:+:$orig_ld} # the build's tools need them too
    ours_ld=$LD_LIBRARY_PATH
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
    nccl=$(python3 -c 'import nvidia.nccl; print(nvidia.nccl.__path__[0])' 2>/dev/null || true)
    [[ -n $nccl ]] && export NCCL_HOME=$nccl && ours_ld=$nccl/lib${ours_ld:+:$ours_ld}
    [[ -n $nccl && ! -e $nccl/lib/libnccl.so ]] && ln -sf libnccl.so.2 "$nccl/lib/libnccl.so" 2>/dev/null
  fi
  log "configure (sm_$arch)"
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DMM_ASAN_TESTS=OFF "${cmake_extra[@]}" >"$out/configure.log" 2>&1
  cfg_rc=$?
  targets=(test_backend_cuda test_cuda_models llm_gpu decoder_gpu mm-mkmodel mm-coordinator mm-stage mmctl)
  build_rc=1
  if ((cfg_rc == 0)); then
    log "build ${targets[*]}"
    cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >"$out/build.log" 2>&1
    build_rc=$?
  fi
  ((cfg_rc || build_rc)) && tail -30 "$out/configure.log" "$out/build.log"
  bin_tests=$build/tests bin_bench=$build/bench bin_tools=$build/tools
fi
log "configure rc=$cfg_rc build rc=$build_rc (logs in $out)"

# ---- 3. tests and benchmarks ----
# The model for bench/llm_gpu is written on the CPU while the tests use the GPU.
tests_rc=-1 bench_rc=-1 torch_rc=-1 dec_rc=-1
models=${MM_GPU_MODELS:-/tmp/mm-gpu-models}
mdir=$models/llama3-8b-bf16-L$layers
if ((build_only == 0 && build_rc == 0)); then
  mkdir -p "$models"
  mk_pid=
  if [[ ! -f $mdir/config.json ]]; then
    log "mm-mkmodel llama3-8b bf16, $layers layers (background)"
    ours "$bin_tools/mm-mkmodel" --preset llama3-8b --dtype bf16 --layers "$layers" \
      --tokenizer "$root/assets/tiny/llm/tokenizer.json" --out "$mdir" >"$out/mkmodel.log" 2>&1 &
    mk_pid=$!
  fi
  : >"$out/tests.tsv"
  tests_rc=0
  for t in test_backend_cuda test_cuda_models; do
    log "$t"
    MM_GOLDEN_DIR=$root/tests/golden MM_ASSETS_DIR=$root/assets ours timeout 100 "$bin_tests/$t" >"$out/$t.log" 2>&1
    rc=$?
    case $rc in 0) st=Passed ;; 77) st=Skipped ;; 124) st=Timeout ;; *) st=Failed ;; esac
    ((rc != 0)) && tests_rc=1
    printf '%s\t%s\t%s\n' "$t" "$st" "$rc" >>"$out/tests.tsv"
    log "$t: $st (rc $rc)"
    grep -E "FAIL|error|Error" "$out/$t.log" | head -40
    tail -3 "$out/$t.log"
  done
  # the service: coordinator + one CUDA stage through MPI, greedy ids against a CPU stage
  if [[ $(cut -f2 "$out/tests.tsv" | head -1) == Skipped ]]; then
    log "service_check: skipped (no GPU)"
  else
    if [[ -n $prebuilt ]]; then
      svc_bin=$pack/bin
    else
      svc_bin=$build/svc-bin
      mkdir -p "$svc_bin"
      ln -sf "$build/coordinator/mm-coordinator" "$build/worker/mm-stage" "$build/tools/mmctl" "$svc_bin/"
    fi
    log "service_check (mm-coordinator + mm-stage --backend cuda vs a CPU stage)"
    MM_LD_LIBRARY_PATH=$ours_ld timeout 150 bash "$root/tests/gpu/service_check.sh" "$svc_bin" "$root" \
      >"$out/service.json" 2>"$out/service.log"
    rc=$?
    case $rc in 0) st=Passed ;; 124) st=Timeout ;; *) st=Failed ;; esac
    ((rc != 0)) && tests_rc=1
    printf '%s\t%s\t%s\n' service_check "$st" "$rc" >>"$out/tests.tsv"
    log "service_check: $st (rc $rc)"
    cat "$out/service.json"
    ((rc)) && tail -30 "$out/service.log"
  fi
  if [[ -n $mk_pid ]]; then
    wait "$mk_pid" || log "mm-mkmodel failed: $(tail -3 "$out/mkmodel.log")"
  fi
  log "bench/llm_gpu (layers $layers)"
  ours timeout 150 "$bin_bench/llm_gpu" --workdir "$models" --layers "$layers" --profile >"$out/llm_gpu.json" 2>"$out/llm_gpu.log"
  bench_rc=$?
  cat "$out/llm_gpu.json"
  ((bench_rc)) && tail -20 "$out/llm_gpu.log"
  # Python wheels carried along (diffusers for decode_gpu's baseline), into a private dir
  if compgen -G "$root/.gpu/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$build/site" "$root"/.gpu/whl/*.whl \
      >"$out/pip.log" 2>&1 && export PYTHONPATH=$build/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  log "bench/decoder_gpu (SD 1.5 UNet step and VAE, diffusers on the same GPU)"
  MM_BENCH_PYTHON="env LD_LIBRARY_PATH=$orig_ld python3" ours timeout 120 "$bin_bench/decoder_gpu" --workdir "$models/sd15" --runs 5 >"$out/decoder_gpu.json" 2>"$out/decoder_gpu.log"
  dec_rc=$?
  cat "$out/decoder_gpu.json"
  ((dec_rc)) && tail -20 "$out/decoder_gpu.log"
  log "bench/llm_torch.py (PyTorch + transformers baseline)"
  timeout 150 python3 bench/llm_torch.py --layers "$layers" >"$out/llm_torch.json" 2>"$out/llm_torch.log"
  torch_rc=$?
  cat "$out/llm_torch.json"
  ((torch_rc)) && tail -20 "$out/llm_torch.log"
fi

# ---- 4. summary ----
python3 - "$out" "$cfg_rc" "$build_rc" "$tests_rc" "$bench_rc" "$torch_rc" "$dec_rc" "$t_start" <<'PY'
import json, os, re, subprocess, sys, time
out, cfg, bld, tst, bench, torch_rc, dec_rc, t0 = sys.argv[1], *map(int, sys.argv[2:])
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
    for line in open(os.path.join(out, "tests.tsv")):
        name, status, rc = line.rstrip("\n").split("\t")
        tests[name] = status
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
     "llm_torch": torch_rc, "decoder_gpu": dec_rc}, "tests": tests, "llm_gpu": ours, "llm_torch": base,
     "decoder_gpu": load("decoder_gpu.json"), "service": load("service.json"), "ours_over_torch": ratio,
     "targets": {"decode_b1_fraction_of_copy_bandwidth": 0.85, "prefill_fraction_of_gemm_peak": 0.70}}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(s, f, indent=1)
print(json.dumps({k: s[k] for k in ("device", "wall_s", "rc", "tests", "ours_over_torch")}, indent=1))
PY
log "summary: $out/summary.json"
((cfg_rc == 0 && build_rc == 0 && (build_only == 1 || tests_rc == 0)))
