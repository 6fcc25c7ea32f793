// The Shakespeare model shipped in the package (models/default.safetensors), against what the
// training script recorded with PyTorch (models/default.report.json).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { defaultModelPath, evaluate, loadModel, type Model } from '../lib/index.js';
import { ROOT } from './helpers.js';

interface TrainingReport {
  config: { vocabSize: number; blockSize: number; nLayer: number; nHead: number; nEmbd: number; bias: boolean };
  parameters: number;
  valLoss: number;
  valTokens: number;
  sample: { prompt: string; maxNewTokens: number; continuation: string };
}

const report = JSON.parse(readFileSync(join(ROOT, 'models', 'default.report.json'), 'utf8')) as TrainingReport;
const CORPUS = join(ROOT, '..', 'shared', 'data', 'tinyshakespeare.txt');

describe('the bundled default model', () => {
  let model: Model;
  before(async () => {
    model = await loadModel('default', { backend: 'native' });
  });
  after(() => model.dispose());

  test('ships inside the package, at most 15 MB, as float16', () => {
    assert.equal(defaultModelPath(), join(ROOT, 'models', 'default.safetensors'));
    assert.ok(statSync(defaultModelPath()).size <= 15_000_000);
    assert.equal(model.source.storedDType, 'F16');
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { files: string[] };
    assert.ok(pkg.files.includes('models/default.safetensors'));
  });

  test('has the shape and size the training report gives', () => {
    assert.deepEqual(model.config, report.config);
    assert.equal(model.parameterCount, report.parameters);
    assert.equal(model.tokenizer.size, 65);
  });

  test(`greedy continuation of ${JSON.stringify(report.sample.prompt)} is PyTorch's, past blockSize`, async () => {
    assert.ok(report.sample.maxNewTokens > model.config.blockSize);
    const text = await model.generate(report.sample.prompt, { temperature: 0, maxNewTokens: report.sample.maxNewTokens });
    assert.equal(text, report.sample.continuation);
  });

  test('the js engine agrees on the first tokens', async () => {
    const js = await loadModel('default', { backend: 'js' });
    const text = await js.generate(report.sample.prompt, { temperature: 0, maxNewTokens: 40 });
    assert.equal(text, report.sample.continuation.slice(0, 40));
    js.dispose();
  });

  const skip = existsSync(CORPUS) ? false : 'needs ../shared/data/tinyshakespeare.txt (the shared corpus is absent)';
  test("eval's loss on the validation split equals PyTorch's within 1e-4, and is at most 1.50", { skip }, async () => {
    const result = await evaluate(model, readFileSync(CORPUS, 'utf8'), { split: 'val' });
    assert.equal(result.tokens, report.valTokens);
    assert.ok(Math.abs(result.loss - report.valLoss) < 1e-4, `loss ${result.loss} vs PyTorch ${report.valLoss}`);
    assert.ok(result.loss <= 1.5, `validation loss ${result.loss}`);
  });

  test('microgpt generate and info use it without --model', () => {
    const cli = join(ROOT, 'dist', 'lib', 'cli.js');
    const gen = spawnSync(process.execPath, [cli, 'generate', '--prompt', report.sample.prompt, '--temperature', '0', '--max-new-tokens', '60'], { encoding: 'utf8' });
    assert.equal(gen.status, 0, gen.stderr);
    assert.equal(gen.stdout, report.sample.continuation.slice(0, 60));
    const info = spawnSync(process.execPath, [cli, 'info', '--json'], { encoding: 'utf8' });
    assert.equal(info.status, 0, info.stderr);
    const out = JSON.parse(info.stdout) as { config: unknown; parameters: number; metadata: Record<string, string> };
    assert.deepEqual(out.config, report.config);
    assert.equal(out.metadata['valLoss'], report.valLoss.toFixed(6));
  });
});
