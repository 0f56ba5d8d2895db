#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every test.
#   tools/test.sh              normal build in build/
#   QG_SANITIZE=address,undefined tools/test.sh build-asan
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
tools/install-deps.sh
cmake -S . -B "$dir" -DQG_SANITIZE="${QG_SANITIZE:-}" ${QG_CMAKE_ARGS:-} >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir"
ctest --output-on-failure -j"$(nproc)" ${QG_CTEST_ARGS:-}
