#!/usr/bin/env bash
# The win32-x64 stage, for CI (.ci/run) and by hand, on an x86-64 Linux host:
#
#  1. build: the addon cross-compiled with mingw-w64 (cmake/x86_64-w64-mingw32.cmake) in
#     build-win/, linked against an import library of node.exe (libgcc, libstdc++ and winpthreads
#     static: it needs nothing but node.exe), stripped into prebuilds/win32-x64/microgpt.node;
#  2. test: the native test files that cover the kernels (each instruction set against the scalar
#     reference), parity with the PyTorch fixtures, batching and the bundled model's greedy text,
#     and the install script's choice of binary, run by a Windows node.exe under wine. node-gyp-build takes the Windows binary from
#     build-win/addon/ because MICROGPT_PREBUILD points there (it honours <PACKAGE NAME>_PREBUILD),
#     as scripts/sanitize.sh does for its build. Then `microgpt info` under wine, with nothing
#     but prebuilds/ (PREBUILDS_ONLY), must name prebuilds/win32-x64/microgpt.node.
#
# scripts/install-win-deps.sh installs what it needs; without it this skips (exit 0, one line).
# Needs dist/ (npm run build); builds with -j2 at most.
# Usage: scripts/win32-x64.sh [build|test]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

want=${1:-all}
case $want in all | build | test) ;; *) echo "usage: scripts/win32-x64.sh [build|test]" >&2; exit 2 ;; esac
cache=${MICROGPT_WIN_CACHE:-$HOME/.cache/microgpt-win}
version=$(node -p process.versions.node)
node_dir=$cache/node-v$version
wine=$(command -v wine64 || echo /usr/lib/wine/wine64)   # Debian's wine64 package: /usr/lib/wine/ only
wineserver=$(command -v wineserver || echo /usr/lib/wine/wineserver)
started=$SECONDS
stage() { echo "win32-x64: $* ($((SECONDS - started)) s)"; }

missing=()
command -v x86_64-w64-mingw32-g++-posix >/dev/null || missing+=("mingw-w64 (x86_64-w64-mingw32-g++-posix)")
[[ -x $wine ]] || missing+=("wine (wine64)")
command -v cmake >/dev/null || missing+=(cmake)
[[ -f $node_dir/node.exe && -f $node_dir/libnode.a ]] || missing+=("node.exe $version and its import library in $node_dir")
if ((${#missing[@]})); then
  echo "win32-x64: skipped: no $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g'); scripts/install-win-deps.sh installs them"
  exit 0
fi

# The tests this stage runs, and those it leaves out (scripts/sanitize-skip.mjs reports them as
# skipped): the validation-split eval of the bundled model is 20 s of the same kernels the other
# tests check; and, as under the sanitizers, the test that measures how busy the event loop is:
# under wine every system call of the main thread goes through the emulator, and its share of a
# batched generation measured 35-54 % there against 13-17 % natively (2026-11-30), around the
# test's 50 % bound, a property of wine rather than of the engine.
TEST_FILES=(native-kernels native-model native-batch default-model install-selection)
SKIP_TESTS="eval's loss on the validation split|event loop stays free"

if [[ $want != test ]]; then
  stage "building build-win/ with mingw-w64"
  node_include=$(node -p "require('path').join(process.execPath, '..', '..', 'include', 'node')")
  if [[ ! -f $node_include/node_api.h ]]; then
    echo "win32-x64: no node_api.h in $node_include (Node's headers); install them" >&2
    exit 1
  fi
  mkdir -p build-win
  cmake -S . -B build-win -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/x86_64-w64-mingw32.cmake" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_JS_INC="$node_include" -DCMAKE_JS_LIB="$node_dir/libnode.a" >build-win/configure.log 2>&1 ||
    { cat build-win/configure.log; exit 1; }
  cmake --build build-win -j 2
  mkdir -p prebuilds/win32-x64 build-win/addon/build/Release
  x86_64-w64-mingw32-strip -o prebuilds/win32-x64/microgpt.node build-win/microgpt.node
  cp prebuilds/win32-x64/microgpt.node build-win/addon/build/Release/microgpt.node
  # What it needs at load time: node.exe and DLLs every Windows has, nothing from mingw.
  imports=$(x86_64-w64-mingw32-objdump -p prebuilds/win32-x64/microgpt.node | sed -n 's/^\s*DLL Name: //p' | tr '\n' ' ')
  for dll in $imports; do
    case ${dll,,} in node.exe | kernel32.dll | msvcrt.dll | advapi32.dll | user32.dll | ws2_32.dll) ;;
      *) echo "win32-x64: prebuilds/win32-x64/microgpt.node imports $dll, which Windows does not ship" >&2; exit 1 ;;
    esac
  done
  stage "built prebuilds/win32-x64/microgpt.node ($(stat -c %s prebuilds/win32-x64/microgpt.node) bytes; imports ${imports% })"
fi

if [[ $want != build ]]; then
  [[ -f build-win/addon/build/Release/microgpt.node ]] || { echo "win32-x64: nothing built; run scripts/win32-x64.sh build" >&2; exit 1; }
  [[ -d dist/test ]] || npm run build --silent
  stage "the native tests under wine: ${TEST_FILES[*]}"
  export WINEPREFIX=$cache/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
  # Node under wine cannot write to a pipe (EBADF opening stdout), which CI's output may be: it
  # writes to a file, shown as it grows.
  log=build-win/test.log
  : >"$log"
  files=()
  for f in "${TEST_FILES[@]}"; do files+=("dist/test/$f.test.js"); done
  MICROGPT_PREBUILD="$PWD/build-win/addon" MICROGPT_SKIP_TESTS="$SKIP_TESTS" \
    MICROGPT_SKIP_REASON="left out under wine (SKIP_TESTS in scripts/win32-x64.sh says why)" \
    "$wine" "$node_dir/node.exe" --import ./scripts/sanitize-skip.mjs --test --test-reporter=spec "${files[@]}" \
    </dev/null >"$log" 2>&1 &
  pid=$!
  tail -n +1 -f --pid="$pid" "$log"
  status=0
  wait "$pid" || status=$?
  if ((status == 0)); then
    # What an installed package does on Windows: node-gyp-build, left to itself (no build/),
    # takes prebuilds/win32-x64/, and microgpt info names it.
    PREBUILDS_ONLY=1 "$wine" "$node_dir/node.exe" dist/lib/cli.js info </dev/null >build-win/info.txt 2>&1 || status=$?
    line=$(tr -d '\r' <build-win/info.txt | grep '^native ' || true)
    if [[ $line != "native      prebuilds/win32-x64/microgpt.node ("* ]]; then
      echo "win32-x64: microgpt info under wine does not name prebuilds/win32-x64/microgpt.node:" >&2
      cat build-win/info.txt >&2
      status=1
    fi
  fi
  # The prefix's wineserver lingers a few seconds after its last program: end it now, so that
  # nothing of this stage outlives it.
  "$wineserver" -k 2>/dev/null || true
  if ((status != 0)); then
    echo "win32-x64: the native tests failed under wine (exit $status)" >&2
    exit 1
  fi
  stage "the native tests passed under wine; microgpt info there: ${line#native      }"
fi
