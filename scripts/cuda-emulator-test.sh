#!/usr/bin/env bash
# The CUDA emulator's own test program (native/tests/cuda_emulator_test.cpp, through CTest), for
# CI (.ci/run): barriers, shuffles, shared memory, CUDA's launch limits and errors, graph capture
# and replay, the memory cap, half-float conversion. The CUDA engine on the emulator is tested by
# npm test (test/cuda-emulated.test.ts). Skips in one line where the emulator is not built (it is
# Linux-only).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(uname -s)" != Linux ] || ! command -v cmake >/dev/null; then
  echo "cuda-emulator-test: skipped: the CUDA emulator is built on Linux, with cmake"
  exit 0
fi
started=$SECONDS
cmake -S . -B build-emulator -DCMAKE_BUILD_TYPE=Release -DMICROGPT_TESTS=ON -DMICROGPT_CUDA=OFF -DMICROGPT_CUDA_EMULATOR=ON >/dev/null
cmake --build build-emulator -j 2 --target cuda_emulator_test >/dev/null
(cd build-emulator && ctest -R cuda_emulator --output-on-failure)
echo "cuda-emulator-test: passed ($((SECONDS - started)) s)"
