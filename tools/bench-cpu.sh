#!/usr/bin/env bash
# CPU benchmark against llama.cpp, same file, same threads, same run:
#   tools/bench-cpu.sh BUILD_DIR MODEL THREADS [PP] [TG] [REPS]
# Prints qmoe-graph's and llama.cpp's llama-bench style tables (llama.cpp
# through tests/bench/qg_llama_bench.c and the npm libllama).
set -euo pipefail
build=$1 model=$2 threads=$3 pp=${4:-64} tg=${5:-32} reps=${6:-3}
echo "### $(basename "$model"), $threads threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo
echo "qmoe-graph:"
"$build/qmoe-graph" bench "$model" -t "$threads" -p "$pp" -n "$tg" -r "$reps"
echo
echo "llama.cpp (prebuilt libllama from npm, same tokens):"
"$build/tests/qg-llama-bench" "$model" -t "$threads" -p "$pp" -n "$tg" -r "$reps"
