#!/usr/bin/env bash
# Greedy agreement of a GPU executor with the CPU executor on the 30b-a3b
# file: 10 prompts x 64 tokens, with the F16 and the F32 KV cache.
#   tools/agree-device.sh QMOE_GRAPH_BINARY BACKEND OUTFILE
# AGREE_KV="f16" (default "f16 f32") limits the KV cache types.
# BACKEND "cpu-avx2" is the control: the CPU executor with its AVX2 kernels
# (QG_SIMD=avx2: other summation orders, same numerics class) against the
# default AVX-512 ones, i.e. how far two correct f32 executors part on this
# model.
# A run that fails or prints nothing counts as a disagreement and is
# reported with the end of its stderr; the script exits 1 then.
set -uo pipefail
q=$1 backend=$2 out=$3
model=/tmp/30b-a3b-q4_k_m.gguf
[ -f $model ] || $q synth $model --preset 30b-a3b --ftype q4_k_m -q
prompts=("The capital of France is" "def fibonacci(n):" "Once upon a time" "1, 2, 3, 4," "The quick brown fox"
         "In 1492, Columbus" "import numpy as np" "Dear Sir or Madam," "The meaning of life is" "SELECT * FROM")
err=$(mktemp)
bad=0
# gen KV BACKEND_ARGS... : the greedy continuation of "$p", or fail
gen() {
    local kv=$1
    shift
    local o
    o=$(timeout 120 $q run $model -p "$p" -n 64 --temp 0 -c 256 --kv-type "$kv" "$@" 2>"$err")
    local rc=$?
    if [ $rc -ne 0 ] || [ ${#o} -le ${#p} ]; then
        echo "run failed (exit $rc, ${#o} bytes) for '$p' ($*): $(tail -c 300 "$err")" >&2
        bad=1
        return 1
    fi
    printf '%s' "$o"
}
for kv in ${AGREE_KV:-f16 f32}; do
  same=0
  for p in "${prompts[@]}"; do
    if [ "$backend" = cpu-avx2 ]; then
      a=$(QG_SIMD=avx2 gen "$kv" -t 16) || { bad=1; continue; }
    else
      a=$(gen "$kv" --backend "$backend") || { bad=1; continue; }
    fi
    b=$(gen "$kv" -t 16) || { bad=1; continue; }
    if [ "$a" == "$b" ]; then
      same=$((same+1))
    else
      # the first differing byte, for the record
      i=0; while [ "${a:$i:1}" == "${b:$i:1}" ]; do i=$((i+1)); done
      echo "  '$p': first difference at byte $i of ${#a}" >> "$out"
    fi
  done
  echo "kv $kv: $backend vs cpu greedy 64-token continuations: $same / ${#prompts[@]} identical" | tee -a "$out"
done
rm -f "$err"
exit $bad
