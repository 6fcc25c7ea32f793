// The js backend's forward pass against PyTorch, and its KV cache against a fresh forward pass.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { jsBackend } from '../lib/backends/js/index.js';
import { loadModel, readModelFile } from '../lib/index.js';
import { MODEL_NAMES, checkKvCacheChunking, expected, expectedLogits, fixture, maxAbsDiff } from './helpers.js';

for (const name of MODEL_NAMES) {
  const e = expected(name);
  const sources: [string, string][] = [
    ['nanoGPT out_dir', fixture('models', name)],
    ['ckpt.pt', fixture(e.checkpoint)],
  ];
  if (e.safetensors !== null) sources.push(['safetensors', fixture(e.safetensors)]);

  describe(`${name} logits`, () => {
    for (const [kind, path] of sources) {
      test(`every position matches PyTorch within 1e-4 (${kind})`, async () => {
        const model = await loadModel(path, { backend: 'js' });
        assert.deepEqual(model.config, e.config);
        assert.equal(model.parameterCount, e.parameters);
        const logits = await model.logits(e.logits.ids);
        const want = expectedLogits(e);
        assert.equal(logits.length, e.logits.ids.length * e.config.vocabSize);
        const diff = maxAbsDiff(logits, want);
        assert.ok(diff < 1e-4, `max |logit - torch| = ${diff}`);
        model.dispose();
      });
    }
  });

  test(`${name}: the KV cache gives the logits of a full forward pass, in any chunking`, async () => {
    const file = await readModelFile(fixture(e.checkpoint));
    const runtime = await jsBackend.load(file.config, file.weights);
    const ids = Int32Array.from(e.logits.ids);
    const T = ids.length;
    // Chunks of 1, 3, then single tokens: prefill and decode paths both.
    await checkKvCacheChunking(runtime, ids, [[1, 3, ...Array<number>(T - 4).fill(1)]]);
    runtime.dispose();
  });
}
