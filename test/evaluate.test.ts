// evaluate() and `microgpt eval` against PyTorch's cross-entropy on nanoGPT's validation split.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { availableBackends, evaluate, loadModel } from '../lib/index.js';
import { MODEL_NAMES, ROOT, expected, fixture, maxAbsDiff } from './helpers.js';

const CORPUS = join(ROOT, '..', 'shared', 'data', 'tinyshakespeare.txt');
const skip = existsSync(CORPUS) ? false : `needs ../shared/data/tinyshakespeare.txt (the shared corpus is absent)`;

describe('evaluate on the validation split of tinyshakespeare', { skip }, () => {
  for (const name of MODEL_NAMES) {
    test(`${name}: the loss equals PyTorch's within 1e-4`, async () => {
      const e = expected(name) as ReturnType<typeof expected> & { valLoss: { windows: number; loss: number } };
      const model = await loadModel(fixture(e.checkpoint), { backend: 'js' });
      const result = await evaluate(model, readFileSync(CORPUS, 'utf8'), { split: 'val' });
      assert.equal(result.windows, e.valLoss.windows);
      assert.equal(result.tokens, e.valLoss.windows * e.config.blockSize);
      assert.ok(Math.abs(result.loss - e.valLoss.loss) < 1e-4, `loss ${result.loss} vs torch ${e.valLoss.loss}`);
      assert.ok(Math.abs(result.perplexity - Math.exp(e.valLoss.loss)) < 1e-3);
      model.dispose();
    });
  }

  test('microgpt eval --split val --json reports the same loss', () => {
    const e = expected('tiny-bf16') as ReturnType<typeof expected> & { valLoss: { loss: number } };
    const r = spawnSync(process.execPath, [join(ROOT, 'dist', 'lib', 'cli.js'), 'eval', '--model', fixture('models', 'tiny-bf16'), '--data', CORPUS, '--split', 'val', '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { loss: number; split: string; backend: string };
    assert.ok(Math.abs(out.loss - e.valLoss.loss) < 1e-4);
    assert.equal(out.split, 'val');
  });
});

describe('loss by position in the window, against PyTorch', () => {
  const curves = JSON.parse(readFileSync(fixture('expected', 'position-loss.json'), 'utf8')) as {
    text: string;
    models: Record<string, { checkpoint: string; blockSize: number; windows: number; loss: number; lossByPosition: number[] }>;
  };
  const backends = availableBackends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name);
  for (const [name, want] of Object.entries(curves.models)) {
    test(`${name}: every context length's mean loss is PyTorch's within 1e-4, on ${backends.join(' and ')}`, async () => {
      const got: number[][] = [];
      for (const backend of backends) {
        const model = await loadModel(fixture(want.checkpoint), { backend });
        const plain = await evaluate(model, curves.text);
        const result = await evaluate(model, curves.text, { byPosition: true });
        model.dispose();
        assert.equal(plain.lossByPosition, undefined);
        assert.equal(result.loss, plain.loss); // the option changes nothing else
        assert.equal(result.windows, want.windows);
        const curve = result.lossByPosition!;
        assert.equal(curve.length, want.blockSize);
        assert.ok(maxAbsDiff(curve, want.lossByPosition) < 1e-4, `${backend}: ${maxAbsDiff(curve, want.lossByPosition)} from torch`);
        assert.ok(Math.abs(curve.reduce((a, b) => a + b, 0) / curve.length - result.loss) < 1e-12, 'the mean of the curve is the loss');
        assert.ok(Math.abs(result.loss - want.loss) < 1e-4);
        got.push(curve);
      }
      for (const curve of got.slice(1)) assert.ok(maxAbsDiff(curve, got[0]!) < 1e-4, 'the engines disagree');
    });
  }
});

test('evaluate names a character outside the vocabulary, and needs a window of text', async () => {
  const model = await loadModel(fixture('models', 'tiny-bias.safetensors'));
  await assert.rejects(evaluate(model, 'To be, or not to be: that is the question. Ωmega'), /character 'Ω' \(U\+03A9\) at position 43/);
  await assert.rejects(evaluate(model, 'short'), /the text has 5 tokens; evaluating needs at least blockSize \+ 1 \(17\)/);
  await assert.rejects(evaluate(model, 'x'.repeat(100), { split: 'test' as never }), /split must be 'all' or 'val'/);
  await assert.rejects(evaluate(model, 'x'.repeat(100), { byPosition: 'yes' as never }), /^MicroGPTError: byPosition must be true or false, got "yes"$/);
  model.dispose();
});
