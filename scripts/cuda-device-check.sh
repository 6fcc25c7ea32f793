#!/usr/bin/env bash
# The CUDA engine's check on a machine with an NVIDIA GPU, in one run: the device, the CUDA tests
# (test/cuda.test.ts, and the suite of test/cuda-suite.ts on the device), where a decode step's
# time goes (scripts/decode-profile.mjs --backend cuda), and the benchmark of the cuda engine
# (char-10M and gpt2-124M: decode b1/b8, prefill b1/b8). Everything is written to $OUT (or
# /tmp/cuda-check). Packed here first by scripts/cuda-device-pack.sh; there:
#
#   source .device/env.sh && tar xzf .device/bundle.tgz && bash scripts/cuda-device-check.sh
#
# Each step runs whatever the previous one gave; the exit status is the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/cuda-check}
mkdir -p "$out"
started=$SECONDS
step() { echo "== $* ($((SECONDS - started)) s)"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
node dist/lib/cli.js info --json >"$out/info.json" 2>&1
node -e 'const i = require(process.argv[1]); console.log(JSON.stringify(i.cuda), JSON.stringify(i.backends))' "$out/info.json"

step "tests"
node --test --test-reporter=spec dist/test/cuda.test.js dist/test/cuda-engine.test.js >"$out/tests.log" 2>&1
tests=$?
grep -E "^# (tests|pass|fail|skipped|cancelled)|^not ok|# Subtest" "$out/tests.log" | grep -v "^    # Subtest" | tail -60

step "decode profile"
for model in char-10M gpt2-124M default; do
  timeout 120 node scripts/decode-profile.mjs --backend cuda --model "$model" --tokens 200 --runs 5 2>&1 | tee "$out/profile-$model.txt"
done

step "bench (cuda)"
timeout 300 node dist/lib/cli.js bench --backend cuda --shape char-10M --shape gpt2-124M --runs 5 --json >"$out/bench.json" 2>"$out/bench.log"
echo "bench exit $?"
node -e '
  const r = require(process.argv[1]);
  for (const s of r.shapes) console.log(s.shape, JSON.stringify(s.engines.cuda));
' "$out/bench.json" 2>&1 | cut -c1-900
# The same report with the native engine beside it (the README's table and chart): FULL=1, when
# the device time allows (several minutes on gpt2-124M).
if [ "${FULL:-0}" = 1 ]; then
  step "bench (cuda and native)"
  timeout 420 node dist/lib/cli.js bench --backend cuda --backend native --shape char-10M --shape gpt2-124M --runs 5 --json \
    --chart "$out/bench.svg" >"$out/bench-full.json" 2>"$out/bench-full.log"
  echo "bench exit $?"
fi

step "done, tests exit $tests"
exit $tests
