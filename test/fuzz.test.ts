// Our fuzzer (test/fuzz/) under a fixed budget: the same seeded cases on every machine, about a
// minute on a 2-vCPU host. The findings it (or a longer `npm run fuzz`) ever made are kept in
// test/fixtures/fuzz/<target>/ and replayed here.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { replay, runFuzz } from './fuzz/run.js';
import { TARGETS } from './fuzz/targets.js';
import { fixture } from './helpers.js';

/** The CI budget: cases per target, and the seed that picks them. */
const CASES = 1000;
const SEED = 20261130;

describe('the fuzzer, a fixed budget', () => {
  for (const target of TARGETS) {
    test(`${target.name}: ${CASES} seeded cases, no crash, hang, escaped error, multi-line message or memory jump`, async (t) => {
      const report = await runFuzz({ targets: [target.name], seed: SEED, cases: CASES });
      t.diagnostic(`slowest case ${report.slowestMs[target.name]?.toFixed(0)} ms`);
      assert.equal(report.cases[target.name], CASES);
      assert.deepEqual(
        report.findings.map((f) => `case ${f.index}: ${f.why}`),
        [],
        `replay one with: node dist/test/fuzz/run.js --target ${target.name} --seed ${SEED} --cases N (or save it with --save)`,
      );
    });
  }
});

describe('saved findings replay clean', () => {
  const root = fixture('fuzz');
  const saved = readdirSync(root, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .flatMap((d) => readdirSync(join(root, d.name)).map((f) => join(root, d.name, f)));
  test('there are saved findings to replay', () => {
    assert.ok(saved.length >= 2, `only ${saved.length} saved findings in ${root}`);
  });
  for (const path of saved) {
    test(path.slice(root.length + 1), async () => {
      assert.equal(await replay(path), null);
    });
  }
});
