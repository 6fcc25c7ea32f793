// loadModel's sources: files, nanoGPT out_dirs and where their vocabulary lives; and its refusals.
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { availableBackends, loadModel, MicroGPTError } from '../lib/index.js';
import { expected, fixture } from './helpers.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'microgpt-load-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test("an out_dir finds meta.pkl in data/<dataset>/ as nanoGPT's sample.py does", async () => {
  // nanoGPT's layout: <repo>/out-x/ckpt.pt and <repo>/data/shakespeare_char/meta.pkl.
  await mkdir(join(dir, 'out-x'));
  await mkdir(join(dir, 'data', 'shakespeare_char'), { recursive: true });
  await copyFile(fixture('models', 'tiny-bias', 'ckpt.pt'), join(dir, 'out-x', 'ckpt.pt'));
  await copyFile(fixture('models', 'tiny-bias', 'meta.pkl'), join(dir, 'data', 'shakespeare_char', 'meta.pkl'));
  const model = await loadModel(join(dir, 'out-x'));
  const e = expected('tiny-bias');
  assert.equal(await model.generate(e.greedy.prompt, { temperature: 0, maxNewTokens: 20 }), e.greedy.continuation.slice(0, 20));
  assert.equal(model.source.format, 'nanogpt-checkpoint');
  assert.equal(model.source.metadata['iterNum'], '300');
  model.dispose();
});

test('a checkpoint without a vocabulary nearby says where it looked', async () => {
  const lonely = join(dir, 'elsewhere', 'lonely');
  await mkdir(lonely, { recursive: true });
  await copyFile(fixture('models', 'tiny-bias', 'ckpt.pt'), join(lonely, 'ckpt.pt'));
  await assert.rejects(loadModel(join(lonely, 'ckpt.pt')), /no vocabulary for .*ckpt\.pt: looked for .*meta\.pkl.*pass the meta\.pkl/);
  const model = await loadModel(join(lonely, 'ckpt.pt'), { meta: fixture('models', 'tiny-bias', 'meta.pkl') });
  assert.equal(model.tokenizer.size, 65);
  model.dispose();
});

test('sources that are not models are refused clearly', async () => {
  await assert.rejects(loadModel(join(dir, 'missing.safetensors')), /cannot read model .*missing\.safetensors: no such file or directory/);
  await mkdir(join(dir, 'empty'));
  await assert.rejects(loadModel(join(dir, 'empty')), /is a directory without a ckpt\.pt/);
  const legacy = join(dir, 'legacy.pt');
  await writeFile(legacy, Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
  await assert.rejects(loadModel(legacy), /legacy/);
  await assert.rejects(loadModel(''), /model source must be a path/);
});

test('backend and thread options are checked', async () => {
  const path = fixture('models', 'tiny-bias.safetensors');
  await assert.rejects(loadModel(path, { backend: 'tpu' as never }), /backend must be one of auto, js, native, cuda, got "tpu"/);
  await assert.rejects(loadModel(path, { threads: 0 }), /threads must be an integer from 1 to 256, got 0/);
  const cuda = availableBackends().find((b) => b.name === 'cuda');
  assert.ok(cuda !== undefined);
  if (!cuda.available) {
    await assert.rejects(loadModel(path, { backend: 'cuda' }), (err: unknown) => {
      assert.ok(err instanceof MicroGPTError);
      assert.equal(err.code, 'ERR_BACKEND_UNAVAILABLE');
      assert.ok(err.message.includes(cuda.reason as string));
      return true;
    });
  }
  const js = await loadModel(path, { backend: 'js' });
  assert.equal(js.backend, 'js');
  js.dispose();
});
