#!/usr/bin/env bash
# The native engine under sanitizers, for CI (.ci/run); fails on any finding.
#
#  1. AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/): the engine's own test program
#     (native/tests/engine_stress.cpp, through CTest, leak checking on), then the addon under Node
#     running the native test files (dist/test/native-*.test.js). Node is not built with ASan, so
#     libasan is preloaded; node-gyp-build takes the sanitized binary from build-asan/addon/
#     because MICROGPT_PREBUILD points there (it honours <PACKAGE NAME>_PREBUILD).
#  2. ThreadSanitizer (build-tsan/): the same test program, which drives the thread pool, several
#     models and concurrent callers batching through Transformer::run. Node under TSan is impractical,
#     so the Engine thread of addon_engine.cpp (Node-API) is not covered here.
#
# Skips (exit 0, one line) where the compiler has no sanitizer runtime. Builds with -j2 at most.
# Usage: scripts/sanitize.sh [asan|tsan]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

want=${1:-all}
case $want in all | asan | tsan) ;; *) echo "usage: scripts/sanitize.sh [asan|tsan]" >&2; exit 2 ;; esac
CXX=${CXX:-c++}
JOBS=2
started=$SECONDS
stage() { echo "sanitize: $* ($((SECONDS - started)) s)"; }

# Tests left out under ASan (scripts/sanitize-skip.mjs reports them as skipped): those that
# measure time or memory, since every kernel is ~10-50 times slower and freed memory waits in
# ASan's quarantine (the 10 ms timer test alone would run over two minutes); and the one that
# caps its child's address space (prlimit), where ASan's shadow memory cannot fit.
SKIP_TESTS='event loop stays free|timer keeps ticking|fs calls answer in milliseconds|resident memory|positive, finite rates|outrun scalar|threads the OS cannot start'

probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
# Whether $CXX links and runs a program with these sanitizer flags.
probe() {
  printf 'int main() { return 0; }\n' >"$probe_dir/probe.cpp"
  "$CXX" "$@" -o "$probe_dir/probe" "$probe_dir/probe.cpp" >/dev/null 2>&1 && "$probe_dir/probe" >/dev/null 2>&1
}
if ! command -v cmake >/dev/null; then
  echo "sanitize: skipped: no cmake"
  exit 0
fi
missing=()
if [[ $want != tsan ]] && ! probe -fsanitize=address,undefined; then missing+=(ASan/UBSan); fi
if [[ $want != asan ]] && ! probe -fsanitize=thread; then missing+=(TSan); fi
if ((${#missing[@]})); then
  echo "sanitize: skipped: $CXX cannot build and run with ${missing[*]}"
  exit 0
fi

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
configure() {  # dir, sanitizer, extra cmake arguments
  local dir=$1 sanitize=$2
  shift 2
  mkdir -p "$dir"
  cmake -S . -B "$dir" "${generator[@]}" -DCMAKE_CXX_COMPILER="$(command -v "$CXX")" -DMICROGPT_SANITIZE="$sanitize" \
    -DMICROGPT_TESTS=ON "$@" >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; exit 1; }
}

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# exitcode: a finding fails the run even where a test would have caught the child's exit status.
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:exitcode=66

if [[ $want != tsan ]]; then
  # The addon needs Node's headers: those of the running node, as scripts/build-native.mjs finds them.
  node_include=$(node -p "require('path').join(process.execPath, '..', '..', 'include', 'node')")
  if [[ ! -f $node_include/node_api.h ]]; then
    echo "sanitize: no node_api.h in $node_include (Node's headers); install them" >&2
    exit 1
  fi
  stage "ASan + UBSan: building build-asan/"
  configure build-asan address -DCMAKE_JS_INC="$node_include"
  cmake --build build-asan -j "$JOBS"

  stage "ASan + UBSan: native/tests through CTest"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 ctest --test-dir build-asan --output-on-failure

  stage "ASan + UBSan: the native test files under Node"
  mkdir -p build-asan/addon/build/Release
  cp build-asan/microgpt.node build-asan/addon/build/Release/microgpt.node
  npm run build --silent
  # ASan writes its reports to files, so one in a child process whose exit status a test does not
  # check still fails the run. UBSan (which ignores log_path here) halts the process it is in.
  reports=$PWD/build-asan/reports
  rm -rf "$reports" && mkdir -p "$reports"
  # detect_leaks=0: V8 and Node keep memory to exit by design, and LSan would report all of it.
  # Child processes and workers the tests start inherit the environment, preload included. The
  # spec reporter, unlike dot, shows the stderr of a test file that crashed.
  node_status=0
  LD_PRELOAD="$("$CXX" -print-file-name=libasan.so)" \
    ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:log_path=$reports/asan" \
    MICROGPT_PREBUILD="$PWD/build-asan/addon" \
    MICROGPT_SKIP_TESTS="$SKIP_TESTS" \
    node --import ./scripts/sanitize-skip.mjs --test --test-reporter=spec dist/test/native-*.test.js || node_status=$?
  if compgen -G "$reports/*" >/dev/null; then
    echo "sanitize: AddressSanitizer reports:" >&2
    cat "$reports"/* >&2
    exit 1
  fi
  if ((node_status != 0)); then
    echo "sanitize: the native test files failed under ASan + UBSan (exit $node_status)" >&2
    exit 1
  fi
fi

if [[ $want != asan ]]; then
  stage "TSan: building build-tsan/"
  configure build-tsan thread
  cmake --build build-tsan -j "$JOBS" --target engine_stress

  stage "TSan: native/tests through CTest"
  ctest --test-dir build-tsan --output-on-failure
fi

stage "no findings"
