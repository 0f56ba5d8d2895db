#!/usr/bin/env bash
# Vulkan on an NVIDIA GPU host (issue 5's benchmark and agreement check).
# The GPU host has no glslc or Vulkan headers, so the binary is built on a
# development machine of the same architecture and carried:
#   here:   cmake -S . -B build-vk -DCMAKE_BUILD_TYPE=Release -DQG_CUDA=OFF -DQG_VULKAN=ON \
#             -DQG_REQUIRE_TESTS=OFF && cmake --build build-vk --target qmoe-graph
#   there:  tools/bench-device-vulkan.sh OUTDIR   (carry build-vk and .gl)
# .gl holds the Vulkan loader .debs (see /work/.library/device/README.md).
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
q=build-vk/qmoe-graph
model=/tmp/30b-a3b-q4_k_m.gguf
[ -f $model ] || $q synth $model --preset 30b-a3b --ftype q4_k_m -q
$q info $model 2>&1 | sed -n '/devices/,/memory plan/p' | tee "$out/devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/devices.txt"
# speed
timeout 300 $q bench $model --backend vulkan -p 512 -n 128 -r 3 2>&1 | grep -v '^loading' | tee "$out/bench.md"
# where the time goes
timeout 200 $q profile $model --backend vulkan -p 512 -n 32 2>&1 | grep -v '^loading' > "$out/profile.txt"
sed -n '/^== decode/,/^by layer/p;/^== prefill/,/^by layer/p' "$out/profile.txt"
# agreement: greedy 64-token continuations, Vulkan vs CPU, 10 prompts, with
# the default F16 KV cache and with --kv-type f32 (tools/agree-device.sh:
# a failed run counts as a failure, never as agreement)
AGREE_KV="${AGREE_KV:-f16 f32}" timeout 500 tools/agree-device.sh $q vulkan "$out/agree.txt"
