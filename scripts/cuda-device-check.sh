#!/usr/bin/env bash
# The CUDA engine's check on a machine with an NVIDIA GPU, in one run of under ten minutes: the
# device; the CUDA tests (test/cuda.test.ts, and test/cuda-suite.ts on the device); parity with
# the native engine at real shapes (scripts/cuda-parity.mjs); where a decode step's time goes
# (scripts/decode-profile.mjs --backend cuda); the host's part of a draw (scripts/sampling-cost.mjs);
# the benchmark of the cuda engine (char-10M and gpt2-124M: decode b1/b8, prefill b1/b8); and,
# where it is installed, compute-sanitizer's memcheck and racecheck over the tiny shape and the
# top-k selection kernel. The logs go to $OUT (or /tmp/cuda-check),
# packed into one cuda-check.tgz beside a summary. Packed here first by scripts/cuda-device-pack.sh;
# there:
#
#   source .device/env.sh && tar xzf .device/bundle.tgz && bash scripts/cuda-device-check.sh
#
# FULL=1 adds a bench with the native engine beside cuda (the README's table and chart; minutes).
# Each step runs whatever the previous one gave; the exit status is the tests' and parity's.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/cuda-check}
logs=$out/logs
mkdir -p "$logs"
started=$SECONDS
status=0
step() { echo "== $* ($((SECONDS - started)) s)"; }
finish() {
  tar czf "$out/cuda-check.tgz" -C "$out" logs
  step "done (exit $status): $out/cuda-check.tgz"
  exit $status
}

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$logs/gpu.txt"
# A binary that cannot load here (glibc, a missing file) costs seconds, not the run.
if ! node -e "require('./build/Release/microgpt.node')" >"$logs/load.txt" 2>&1; then
  cat "$logs/load.txt"
  status=3
  finish
fi
node dist/lib/cli.js info --json >"$logs/info.json" 2>&1
node -e 'const i = require(process.argv[1]); console.log(JSON.stringify(i.cuda)); console.log(JSON.stringify(i.backends))' "$logs/info.json"

step "tests"
timeout 240 node --test --test-timeout=120000 --test-reporter=spec dist/test/cuda.test.js dist/test/cuda-engine.test.js >"$logs/tests.log" 2>&1 || status=1
grep -E "^ℹ (tests|pass|fail|skipped|cancelled)|✖" "$logs/tests.log" | head -40

step "parity with the native engine at real shapes"
timeout 150 node scripts/cuda-parity.mjs --shape char-10M --shape gpt2-124M 2>&1 | tee "$logs/parity.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "decode profile"
for model in char-10M gpt2-124M default; do
  timeout 60 node scripts/decode-profile.mjs --backend cuda --model "$model" --tokens 200 --runs 5 2>&1 | tee "$logs/profile-$model.txt"
done

step "the host's part of a draw (gpt2-124M's vocabulary: the whole logits against top-k candidates)"
timeout 60 node scripts/sampling-cost.mjs --runs 5 2>&1 | tee "$logs/sampling-cost.txt"

step "bench (cuda)"
timeout 200 node dist/lib/cli.js bench --backend cuda --shape char-10M --shape gpt2-124M --runs 5 --json >"$logs/bench.json" 2>"$logs/bench.log"
echo "bench exit $?"
node -e '
  const r = require(process.argv[1]);
  for (const s of r.shapes) console.log(s.shape, JSON.stringify(s.engines.cuda));
' "$logs/bench.json" 2>&1 | cut -c1-900

# Last of the default steps: the slowest, and the one whose loss a timeout would cost least.
if command -v compute-sanitizer >/dev/null || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    step "compute-sanitizer --tool $tool (the tiny shape)"
    timeout 90 "$sanitizer" --tool "$tool" --error-exitcode 9 node scripts/cuda-parity.mjs --shape tiny --steps 4 >"$logs/sanitizer-$tool.txt" 2>&1
    echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|all within|FAILED" "$logs/sanitizer-$tool.txt" | head -5
    # The top-k selection kernel, which the tiny shape's 70-token vocabulary never runs.
    timeout 60 "$sanitizer" --tool "$tool" --error-exitcode 9 node --test --test-name-pattern="top-k selection" \
      dist/test/cuda-engine.test.js >"$logs/sanitizer-$tool-select.txt" 2>&1
    echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^ℹ (pass|fail)" "$logs/sanitizer-$tool-select.txt" | head -5
  done
fi

if [ "${FULL:-0}" = 1 ]; then
  step "bench (cuda and native)"
  timeout 420 node dist/lib/cli.js bench --backend cuda --backend native --shape char-10M --shape gpt2-124M --runs 5 --json \
    --chart "$logs/bench.svg" >"$logs/bench-full.json" 2>"$logs/bench-full.log"
  echo "bench exit $?"
fi
finish
