#!/usr/bin/env bash
# The CPU benchmark of docs/BENCHMARKS.md on a GPU host's CPUs (16 cores):
# build (CPU only), make the 30b-a3b Q4_K_M file, then ours vs llama.cpp
# with the same threads, file and tokens, plus a profile of ours.
#   tools/bench-device-cpu.sh OUTDIR [THREADS]
# Needs the llama.cpp oracle carried in .oracle/ (lib/ and include/).
set -euo pipefail
out=${1:?OUTDIR} threads=${2:-$(nproc)}
mkdir -p "$out"
cd "$(dirname "$0")/.."
b=build-devcpu
cmake -S . -B $b -DCMAKE_BUILD_TYPE=Release -DQG_CUDA=OFF -DQG_VULKAN=OFF -DQG_REQUIRE_TESTS=OFF \
  -DQG_LLAMA_DIR="$PWD/.oracle/lib" -DQG_LLAMA_INCLUDE="$PWD/.oracle/include" >"$out/cmake.log" 2>&1
cmake --build $b -j"$(nproc)" --target qmoe-graph qg-llama-bench >"$out/build.log" 2>&1
model=${QG_MODEL_DIR:-/tmp}/30b-a3b-q4_k_m.gguf
[ -f "$model" ] || { /usr/bin/time -v $b/qmoe-graph synth "$model" --preset 30b-a3b --ftype q4_k_m -t "$threads" 2>"$out/synth.log" >/dev/null; tail -25 "$out/synth.log" | grep -E "Elapsed|Maximum resident" || true; }
small=/tmp/small-q4_k_m.gguf
[ -f "$small" ] || $b/qmoe-graph synth "$small" --preset small --ftype q4_k_m -t "$threads" >/dev/null 2>&1
{
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|L3" ; echo
  tools/bench-cpu.sh $b "$model" "$threads" 64 32 3; echo
  tools/bench-cpu.sh $b "$small" "$threads" 64 32 3; echo
} 2>&1 | tee "$out/bench.md"
$b/qmoe-graph profile "$model" -p 64 -n 16 -t "$threads" -o "$out/trace.json" > "$out/profile.txt" 2>&1 || true
head -60 "$out/profile.txt"
