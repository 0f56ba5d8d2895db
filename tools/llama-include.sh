#!/bin/sh
# llama-include.sh - extract llama.cpp's public C headers from the git bundle
# that ships with the npm package node-llama-cpp.
#
# Usage: tools/llama-include.sh OUT_DIR [BUNDLE]
#
#   OUT_DIR  receives llama.h and ggml/include/*.h side by side (flat), so
#            `-I OUT_DIR` is enough for `#include "llama.h"`.
#   BUNDLE   defaults to $QG_SOURCE_DIR (or the repository root this script
#            lives in) /node_modules/node-llama-cpp/llama/gitRelease.bundle,
#            where `npm install` at the repository root puts it.
#
# The headers describe the prebuilt libllama in
# node_modules/@node-llama-cpp/<platform>/bins/<platform>/, which was built
# from the same bundle; the test oracle (tests/ref/qg_llama_oracle.c) needs
# them only for the struct layouts passed by value.
#
# Idempotent: OUT_DIR/.bundle-head records the commit extracted; a second
# run with the same bundle does nothing.  Exit status 0 on success, 1 on
# any failure (with a one-line reason on stderr); OUT_DIR is then left
# without llama.h.
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT_DIR [BUNDLE]" >&2
    exit 1
fi
out=$1
src=${QG_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
bundle=${2:-$src/node_modules/node-llama-cpp/llama/gitRelease.bundle}

if [ ! -f "$bundle" ]; then
    echo "llama-include.sh: no bundle at $bundle (run npm install at the repository root)" >&2
    exit 1
fi
if ! command -v git >/dev/null 2>&1; then
    echo "llama-include.sh: git not found" >&2
    exit 1
fi

head=$(git bundle list-heads "$bundle" 2>/dev/null | awk '$2 == "HEAD" { print $1; exit }')
if [ -z "$head" ]; then
    head=$(git bundle list-heads "$bundle" 2>/dev/null | awk '{ print $1; exit }')
fi
if [ -z "$head" ]; then
    echo "llama-include.sh: $bundle: not a git bundle (git bundle list-heads failed)" >&2
    exit 1
fi

if [ -f "$out/llama.h" ] && [ -f "$out/.bundle-head" ] &&
   [ "$(cat "$out/.bundle-head")" = "$head" ]; then
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qg-llama-include.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

git init -q --bare "$tmp/repo"
if ! git -C "$tmp/repo" fetch -q "$bundle" "$head" 2>"$tmp/err"; then
    echo "llama-include.sh: fetching $head from $bundle failed: $(head -n 1 "$tmp/err")" >&2
    exit 1
fi
mkdir -p "$tmp/x"
git -C "$tmp/repo" archive "$head" include/llama.h ggml/include | tar -x -C "$tmp/x"
if [ ! -f "$tmp/x/include/llama.h" ]; then
    echo "llama-include.sh: $bundle ($head) has no include/llama.h" >&2
    exit 1
fi

mkdir -p "$out"
rm -f "$out/llama.h" "$out/.bundle-head"
cp "$tmp/x/ggml/include/"*.h "$out/"
cp "$tmp/x/include/llama.h" "$out/llama.h"
echo "$head" >"$out/.bundle-head"
exit 0
