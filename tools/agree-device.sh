#!/usr/bin/env bash
# Greedy agreement of a GPU executor with the CPU executor on the 30b-a3b
# file: 10 prompts x 64 tokens, with the F16 and the F32 KV cache.
#   tools/agree-device.sh QMOE_GRAPH_BINARY BACKEND OUTFILE
# AGREE_KV="f16" (default "f16 f32") limits the KV cache types.
set -uo pipefail
q=$1 backend=$2 out=$3
model=/tmp/30b-a3b-q4_k_m.gguf
[ -f $model ] || $q synth $model --preset 30b-a3b --ftype q4_k_m -q
prompts=("The capital of France is" "def fibonacci(n):" "Once upon a time" "1, 2, 3, 4," "The quick brown fox"
         "In 1492, Columbus" "import numpy as np" "Dear Sir or Madam," "The meaning of life is" "SELECT * FROM")
for kv in ${AGREE_KV:-f16 f32}; do
  same=0
  for p in "${prompts[@]}"; do
    a=$(timeout 60 $q run $model -p "$p" -n 64 --temp 0 -c 256 --kv-type $kv --backend $backend 2>/dev/null)
    b=$(timeout 60 $q run $model -p "$p" -n 64 --temp 0 -c 256 --kv-type $kv -t 16 2>/dev/null)
    [ "$a" == "$b" ] && same=$((same+1))
  done
  echo "kv $kv: $backend vs cpu greedy 64-token continuations: $same / ${#prompts[@]} identical" | tee -a "$out"
done
