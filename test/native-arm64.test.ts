// On arm64 (a real machine, or scripts/linux-arm64.sh's cross-built binary under qemu): the NEON
// kernels are the ones the engine runs, and the bundled model writes PyTorch's greedy text on them.
// The other native test files check the kernels and models on every instruction set; this one
// makes sure NEON is among them, so a build or CPU probe that fell back to scalar cannot pass
// unnoticed. Skipped on other architectures.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { nativeBinary } from '../lib/backends/native/index.js';
import { loadModel } from '../lib/index.js';
import { ROOT } from './helpers.js';

const skip = process.arch === 'arm64' ? false : `not arm64 (this is ${process.arch})`;
/** NEON, unless MICROGPT_ISA forces another. */
const isa = process.env['MICROGPT_ISA'] || 'neon';

describe('arm64: the NEON engine', { skip }, () => {
  test('the native binary loads, and NEON is the fastest instruction set it runs', (t) => {
    const binary = nativeBinary();
    t.diagnostic(`binary ${binary.path}, isa ${binary.isa}, supported ${binary.supported.join(', ')}`);
    assert.notEqual(binary.path, null, 'no native binary');
    assert.deepEqual(binary.supported, ['scalar', 'neon']);
    assert.equal(binary.isa, isa);
  });

  test(`the bundled model's greedy text is PyTorch's, on ${isa} (its first 120 characters)`, async () => {
    const report = JSON.parse(readFileSync(join(ROOT, 'models', 'default.report.json'), 'utf8')) as {
      sample: { prompt: string; continuation: string };
    };
    const model = await loadModel('default', { backend: 'native' });
    try {
      const runtime = model.runtimeForDiagnostics as { isa?: string };
      assert.equal(runtime.isa, isa);
      // 120 tokens stay inside blockSize (256): incremental decoding, a few seconds under qemu.
      // default-model.test.ts checks all 300, past blockSize.
      const text = await model.generate(report.sample.prompt, { temperature: 0, maxNewTokens: 120 });
      assert.equal(text, report.sample.continuation.slice(0, 120));
    } finally {
      model.dispose();
    }
  });
});
