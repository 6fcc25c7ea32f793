#!/usr/bin/env bash
# Packs what the GPU check (scripts/cuda-device-check.sh) needs on a machine with an NVIDIA GPU
# that has CUDA's driver but no Node.js, no registry and no build of ours: this machine's node
# (../shared/tools/device-prep.sh), and one archive of what was built here: dist/, the addon and
# the CUDA module (build/Release/, built with nvcc: MICROGPT_CUDA=ON), and the runtime
# dependencies in node_modules. Run from the project root after npm ci:
#
#   bash scripts/cuda-device-pack.sh
#
# then, on the GPU machine (the device tool, carrying .device):
#
#   source .device/env.sh && tar xzf .device/bundle.tgz && bash scripts/cuda-device-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build --silent
MICROGPT_CUDA=ON npm run build:native --silent
[ -f build/Release/microgpt_cuda.so ] || { echo "cuda-device-pack: no build/Release/microgpt_cuda.so (nvcc missing?)" >&2; exit 1; }
bash ../shared/tools/device-prep.sh >/dev/null
# The runtime dependencies: node-gyp-build (loads the addon), prom-client and what it needs (serve).
deps=(node_modules/node-gyp-build node_modules/prom-client node_modules/tdigest node_modules/bintrees node_modules/@opentelemetry)
present=()
for d in "${deps[@]}"; do [ -e "$d" ] && present+=("$d"); done
tar czf .device/bundle.tgz dist build/Release/microgpt.node build/Release/microgpt_cuda.so "${present[@]}"
du -sh .device .device/bundle.tgz
echo "ready: carry .device; on the GPU machine: source .device/env.sh && tar xzf .device/bundle.tgz && bash scripts/cuda-device-check.sh"
