#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs every test with ctest.
# Usage: deploy/test.sh [extra ctest args]   (MM_CMAKE_ARGS adds cmake options)
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/deps.sh
mm_install_deps
mm_build build
cd build
ctest --output-on-failure --timeout 900 "$@"
