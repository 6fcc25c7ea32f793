#!/usr/bin/env bash
# The linux-arm64 stage, for CI (.ci/run) and by hand, on an x86-64 Linux host:
#
#  1. build: the addon cross-compiled with g++-aarch64-linux-gnu (cmake/aarch64-linux-gnu.cmake)
#     in build-arm64/, stripped into prebuilds/linux-arm64/microgpt.glibc.node
#     (scripts/build-cross.mjs, npm run build:prebuild:linux-arm64);
#  2. test: native test files run by an arm64 node under qemu-user, the libraries (loader, glibc,
#     libstdc++) the cross toolchain's: the NEON kernels against the scalar reference, parity with
#     the PyTorch fixtures, batching, float16, and the bundled model's greedy text, with a check
#     that NEON is the instruction set in use (test/native-arm64.test.ts). node-gyp-build takes
#     prebuilds/linux-arm64/ because PREBUILDS_ONLY makes it pass over build/Release/ (the host's
#     x86-64 build).
#
# Emulation runs the kernels some 20-50 times slower, so this is a subset (TEST_FILES, SKIP_TESTS
# below). Each file runs in its own `node FILE`, not under `node --test`: the test runner starts
# a child node per file, and without binfmt_misc the kernel cannot run an arm64 child (qemu-user
# emulates one process); for the same reason the tests that start a child node are left out.
#
# scripts/install-arm64-deps.sh installs what it needs; without it this skips (exit 0, one line).
# Needs dist/ (npm run build).
# Usage: scripts/linux-arm64.sh [build|test]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

want=${1:-all}
case $want in all | build | test) ;; *) echo "usage: scripts/linux-arm64.sh [build|test]" >&2; exit 2 ;; esac
cache=${MICROGPT_ARM64_CACHE:-$HOME/.cache/microgpt-arm64}
version=$(node -p process.versions.node)
node_arm64=$cache/node-v$version/bin/node
binary=prebuilds/linux-arm64/microgpt.glibc.node
started=$SECONDS
stage() { echo "linux-arm64: $* ($((SECONDS - started)) s)"; }

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=("the aarch64 cross compiler (g++-aarch64-linux-gnu)")
[[ -f /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ]] || missing+=("its arm64 libstdc++ (/usr/aarch64-linux-gnu/lib)")
command -v qemu-aarch64-static >/dev/null || missing+=("qemu-user (qemu-aarch64-static)")
command -v cmake >/dev/null || missing+=(cmake)
[[ -x $node_arm64 ]] || missing+=("arm64 node $version in $cache")
if ((${#missing[@]})); then
  echo "linux-arm64: skipped: no $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g'); scripts/install-arm64-deps.sh installs them"
  exit 0
fi

# The tests this stage runs, and those it leaves out (scripts/sanitize-skip.mjs reports them as
# skipped): timing tests (emulation measures qemu, and its NEON is no faster than its scalar
# code); those that start a child node (no binfmt_misc, see above); the scalar variants of the
# model and batching tests (the same C++ as on x86-64, where CI runs them; the NEON file is what
# only this stage compiles and runs: the scalar kernels still run here as the kernels' oracle);
# and the bundled model's 300-token text and validation eval (re-prefills past blockSize, minutes
# under qemu: native-arm64.test.ts checks its first 120 characters instead).
TEST_FILES=(native-arm64 native-kernels native-model native-batch precision)
SKIP_TESTS='outrun scalar|event loop stays free|without a binary, native is unavailable|^scalar: |on native/scalar$'

if [[ $want != test ]]; then
  stage "cross-building build-arm64/ with aarch64-linux-gnu-g++"
  node scripts/build-cross.mjs linux-arm64
fi

if [[ $want != build ]]; then
  [[ -f $binary ]] || { echo "linux-arm64: no $binary; run scripts/linux-arm64.sh build" >&2; exit 1; }
  [[ -d dist/test ]] || npm run build --silent
  stage "the native tests under qemu-aarch64: ${TEST_FILES[*]}"
  failed=()
  for f in "${TEST_FILES[@]}"; do
    # QEMU_LD_PREFIX: the loader and libraries from the cross toolchain; LD_LIBRARY_PATH (the
    # guest's only) keeps a multiarch libc6:arm64, another build of glibc, out of the same process.
    PREBUILDS_ONLY=1 MICROGPT_SKIP_TESTS="$SKIP_TESTS" \
      MICROGPT_SKIP_REASON="left out under qemu (SKIP_TESTS in scripts/linux-arm64.sh says why)" \
      QEMU_LD_PREFIX=/usr/aarch64-linux-gnu QEMU_SET_ENV=LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib \
      qemu-aarch64-static "$node_arm64" --import ./scripts/sanitize-skip.mjs --test-reporter=spec \
      "dist/test/$f.test.js" </dev/null || failed+=("$f")
  done
  if ((${#failed[@]})); then
    echo "linux-arm64: the native tests failed under qemu: ${failed[*]}" >&2
    exit 1
  fi
  stage "the native tests passed under qemu on $binary ($(stat -c %s "$binary") bytes)"
fi
