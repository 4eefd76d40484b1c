#!/usr/bin/env bash
# Run beforehand on a networked Debian 12 (bookworm) machine: downloads the Debian
# packages our build needs that a CUDA + PyTorch GPU image lacks (oneDNN, jansson,
# PCRE2, libpng/libjpeg, gRPC, ZeroMQ, protobuf-c, MPICH) with their dependencies,
# into tests/gpu/debs/ (git-ignored), to be copied along with the tree. run.sh unpacks
# them into a private prefix; nothing is installed here or there.
# Usage: tests/gpu/fetch-debs.sh [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/debs}
mkdir -p "$out"

PKGS=(libdnnl-dev libjansson-dev libpcre2-dev libpng-dev libjpeg62-turbo-dev
      libgrpc-dev libzmq3-dev protobuf-c-compiler libprotobuf-c-dev mpich libmpich-dev)
# Present on any glibc-based CUDA image or not needed to build and run (toolchain,
# perl, PAM, Fortran): never shipped.
BASE='^(libc6|libc6-dev|libc-dev-bin|linux-libc-dev|libgcc-s1|libstdc\+\+6|gcc-12-base|libcrypt1|libcrypt-dev|'
BASE+='debconf|dpkg|debianutils|perl.*|libperl.*|tar|libacl1|libselinux1|libsepol2|libsemanage.*|libaudit.*|'
BASE+='libcap-ng0|libpam.*|passwd|adduser|libdb5\.3|libgdbm.*|zlib1g|libzstd1|liblzma5|libbz2-1\.0|libmd0|'
BASE+='libtinfo6|libgomp1|m4|autoconf|automake|autotools-dev|binutils.*|libbinutils|libctf.*|libgprofng0|'
BASE+='gcc|gcc-12|g\+\+|g\+\+-12|cpp|cpp-12|libgcc-12-dev|libstdc\+\+-12-dev|gfortran.*|libgfortran-12-dev|'
BASE+='libasan8|libtsan2|libubsan1|liblsan0|libitm1|libquadmath0|libatomic1|libcc1-0|libisl23|libmpc3|libmpfr6|'
BASE+='libgmp10|icu-devtools|libicu-dev|hwloc-nox|rpcsvc-proto)$'

if [[ ${MM_SKIP_APT_UPDATE:-0} != 1 ]]; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
fi
# The dependency closure as apt resolves it on an empty system (one choice per
# alternative), whatever is installed here.
mapfile -t deps < <(apt-get -s -o Dir::State::status=/dev/null install --no-install-recommends "${PKGS[@]}" |
                      awk '/^Inst /{print $2}')
want=()
for p in "${deps[@]}"; do
  [[ $p =~ $BASE ]] || want+=("$p")
done
rm -f "$out"/*.deb
echo "fetch-debs: ${#want[@]} packages -> $out"
(cd "$out" && apt-get download -q "${want[@]}" 2>&1 | grep -v "^Get:" || true)
ls "$out"/*.deb | wc -l | xargs echo "fetch-debs: .deb files:"
du -sh "$out"
