#!/usr/bin/env bash
# Vulkan on an NVIDIA GPU host (issue 5's benchmark and agreement check).
# The GPU host has no glslc or Vulkan headers, so the binary is built on a
# development machine of the same architecture and carried:
#   here:   cmake -S . -B build-vk -DCMAKE_BUILD_TYPE=Release -DQG_CUDA=OFF -DQG_VULKAN=ON \
#             && cmake --build build-vk --target qmoe-graph test_vulkan_ops
#   there:  tools/bench-device-vulkan.sh OUTDIR   (carry build-vk/qmoe-graph and .gl)
# .gl holds the Vulkan loader .debs (see /work/.library/device/README.md)
# and Debian's vulkan-validationlayers (`apt-get download
# vulkan-validationlayers` there): the op tests run one executor with the
# Khronos validation layer, and fail without it.
# Knobs (environment):
#   VK_BUILD=DIR        the carried build (build-vk)
#   VK_LAB=FILE         lab_fastmodel (carried, from a CUDA build): makes the
#                       30b-a3b file in seconds (synth's tensor table, random
#                       blocks) instead of `qmoe-graph synth`
#   VK_TESTS=1          run DIR/tests/test_vulkan_ops (and _e2e if carried)
#                       on the GPU first (cmocka from .cuda-dev/cmocka)
#   VK_AB="ENV;ENV"     pp512 and tg128 (-r 5) under each ';'-separated
#                       environment, after one with the defaults; then the
#                       fastest set by tg128 and the defaults once more,
#                       back to back
#   VK_PROFILE=0        skip `qmoe-graph profile` (else run under the fastest
#                       A/B set, with its per-dispatch times in the summary)
#   VK_PROFILE_ENV="VAR=value ..."  profile under this environment instead
#                       (e.g. the prefill switches, which the tg128 choice
#                       of the fastest set does not weigh)
#   AGREE_KV="f16 f32"  KV types of the greedy agreement ("" skips it)
# Writes OUTDIR/summary.md (and bench.md, profile.txt, agree.txt, log.txt).
set -uo pipefail
out=${1:?OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
for d in .cuda-dev/cmocka .cuda-dev/pcre2/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$PWD/$d:${LD_LIBRARY_PATH:-}"
done
B=${VK_BUILD:-build-vk}
q=$B/qmoe-graph
model=/tmp/30b-a3b-q4_k_m.gguf
log=$out/log.txt
sum=$out/summary.md
echo "# Vulkan device run ($(git log -1 --format=%h 2>/dev/null), $(date -u +%Y-%m-%dT%H:%MZ))" > "$sum"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/GPU: /' >> "$sum"
note() { echo "- $1" | tee -a "$sum"; }
# tg FILE: the last tg row's tok/s of a bench table
tg() { grep -E '^\| .*tg[0-9]' "$1" | tail -1 | awk -F'|' '{gsub(/ /,"",$8); print $8}'; }

if [ "${VK_TESTS:-0}" = 1 ]; then
  # test_vulkan_ops includes the real cooperative-matrix executor where the
  # device has them; the e2e test runs twice, the second time with the
  # cooperative-matrix prefill products (QG_VK_CM=1, as ctest's
  # test_vulkan_e2e_cm)
  for t in test_vulkan_ops test_vulkan_e2e test_vulkan_e2e:QG_VK_CM=1; do
    prog=${t%%:*}
    envs=()
    [ "$prog" != "$t" ] && envs=("${t#*:}")
    [ -x "$B/tests/$prog" ] || continue
    timeout 300 env QG_BUILD_DIR="$PWD/$B" QG_SOURCE_DIR="$PWD" QG_ALLOW_NO_ORACLE=1 "${envs[@]}" \
      "$B/tests/$prog" >> "$log" 2>&1
    rc=$?
    note "$t on the GPU: $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)")"
    grep -E '^\[  (FAILED|PASSED) |^coopmat executor' "$log" | tail -3 | sed 's/^/  /' | tee -a "$sum"
  done
fi

if [ ! -f $model ]; then
  if [ -n "${VK_LAB:-}" ] && [ -x "$VK_LAB" ]; then
    timeout 300 "$VK_LAB" $model 30b-a3b q4_k_m >> "$log" 2>&1
  else
    $q synth $model --preset 30b-a3b --ftype q4_k_m -q
  fi
fi
$q info $model 2>&1 | sed -n '/devices/,/memory plan/p' | tee "$out/devices.txt"

# speed
timeout 300 $q bench $model --backend vulkan -p 512 -n 128 -r 3 2>&1 | grep -v '^loading' | tee "$out/bench.md"
grep -E '^\| .*(pp|tg)[0-9]' "$out/bench.md" | sed 's/^/  /' >> "$sum"
if [ -n "${VK_AB:-}" ]; then
  IFS=';' read -r -a sets <<< "$VK_AB"
  best="" best_tg=0
  for ab in default "${sets[@]}"; do
    [ "$ab" = default ] && envs=() || read -r -a envs <<< "$ab"
    timeout 200 env "${envs[@]}" $q bench $model --backend vulkan -p 512 -n 128 -r 5 > "$out/ab.md" 2>&1
    v=$(tg "$out/ab.md")
    pp=$(grep -E '^\| .*pp[0-9]' "$out/ab.md" | tail -1 | awk -F'|' '{gsub(/ /,"",$8); print $8}')
    note "A/B with $ab: tg128 ${v:-failed: $(tail -c 200 "$out/ab.md")}, pp512 ${pp:-?} tok/s"
    if [ "$ab" != default ] && awk -v a="${v%%±*}" -v b="$best_tg" 'BEGIN { exit !(a + 0 > b + 0) }'; then
      best=$ab best_tg=${v%%±*}
    fi
  done
  if [ -n "$best" ]; then
    read -r -a envs <<< "$best"
    for ab in default "$best"; do
      [ "$ab" = default ] && e2=() || e2=("${envs[@]}")
      timeout 200 env "${e2[@]}" $q bench $model --backend vulkan -p 512 -n 128 -r 3 > "$out/ab.md" 2>&1
      note "A/B again with $ab: $(grep -E '^\| .*(pp|tg)[0-9]' "$out/ab.md" | awk -F'|' '{gsub(/ /,"",$7); gsub(/ /,"",$8); printf "%s %s  ", $7, $8}')"
    done
  fi
fi
# where the time goes
# (under VK_PROFILE_ENV when given, else the fastest A/B set, when there
# was one)
if [ "${VK_PROFILE:-1}" != 0 ]; then
  pset=${VK_PROFILE_ENV:-${best:-}}
  [ -n "$pset" ] && read -r -a envs <<< "$pset" || envs=()
  note "profile with ${pset:-the defaults}"
  timeout 200 env "${envs[@]}" QG_DEBUG=vulkan $q profile $model --backend vulkan -p 512 -n 32 2>&1 |
    grep -v '^loading' > "$out/profile.txt"
  sed -n '/^== decode/,/^by layer/p;/^== prefill/,/^by layer/p' "$out/profile.txt"
  # per dispatch, by node op and shader (QG_DEBUG=vulkan, at graph release)
  grep -E '^vulkan: (decode|prefill) graph, dispatch|^vulkan:   ' "$out/profile.txt" | tee -a "$sum"
fi
# agreement: greedy 64-token continuations, Vulkan vs CPU, 10 prompts, with
# the default F16 KV cache and with --kv-type f32 (tools/agree-device.sh:
# a failed run counts as a failure, never as agreement)
if [ -n "${AGREE_KV-f16 f32}" ]; then
  AGREE_KV="${AGREE_KV:-f16 f32}" timeout 500 tools/agree-device.sh $q vulkan "$out/agree.txt"
  sed 's/^/  /' "$out/agree.txt" >> "$sum"
fi
cat "$sum"
