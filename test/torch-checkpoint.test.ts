/**
 * nanoGPT checkpoints and meta.pkl files that PyTorch and pickle wrote
 * (scripts/make_pickle_fixtures.py), read without Python: tensors must equal the values torch.save
 * was given, and every damaged or unsupported file must be refused with a message naming the cause.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { test } from 'node:test';
import { MicroGPTError } from '../lib/errors.js';
import { ORDERED_DICT_GLOBAL, type PickleTuple, unpickle } from '../lib/formats/pickle.js';
import { readMetaPkl, readTorchCheckpoint } from '../lib/formats/torch-checkpoint.js';
import { ZipReader } from '../lib/formats/zip.js';
import { assembleWeights } from '../lib/weights.js';
import { fixture } from './helpers.js';

interface ExpectedError {
  code: string;
  includes: string[];
}

interface ExpectedCheckpoint {
  config: { vocabSize: number; blockSize: number; nLayer: number; nHead: number; nEmbd: number; bias: boolean };
  iterNum: number | null;
  bestValLoss: number | null;
  storedDType: string;
  tensors: string;
}

interface Manifest {
  checkpoints: Record<string, ExpectedCheckpoint | { error: ExpectedError }>;
  meta: Record<string, { chars: string[] } | { error: ExpectedError }>;
  marker: string;
}

const manifest = JSON.parse(readFileSync(fixture('pickle', 'manifest.json'), 'utf8')) as Manifest;
const path = (name: string) => fixture('pickle', name);

function cases<T>(record: Record<string, T | { error: ExpectedError }>): { ok: [string, T][]; failing: [string, ExpectedError][] } {
  const ok: [string, T][] = [];
  const failing: [string, ExpectedError][] = [];
  for (const [name, value] of Object.entries(record)) {
    if (typeof value === 'object' && value !== null && 'error' in value) failing.push([name, value.error]);
    else ok.push([name, value as T]);
  }
  return { ok, failing };
}

async function assertRejects(promise: Promise<unknown>, expected: ExpectedError, name: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof MicroGPTError, `${name}: expected a MicroGPTError, got ${String(err)}`);
    assert.equal(err.code, expected.code, `${name}: ${err.message}`);
    for (const part of expected.includes) assert.ok(err.message.includes(part), `${name}: "${err.message}" lacks "${part}"`);
    assert.ok(err.message.startsWith(path(name)), `${name}: message should start with the path: ${err.message}`);
    return true;
  });
}

const checkpoints = cases(manifest.checkpoints);
const metas = cases(manifest.meta);

test('the fixture manifest covers every checkpoint case', () => {
  const ok = checkpoints.ok.map(([name]) => name);
  for (const name of ['ckpt_basic.pt', 'ckpt_compiled.pt', 'ckpt_views.pt', 'ckpt_f16.pt', 'ckpt_bf16.pt', 'ckpt_f64.pt', 'ckpt_optimizer_garbage.pt', 'ckpt_lmhead_clone.pt']) {
    assert.ok(ok.includes(name), name);
  }
  assert.ok(checkpoints.failing.length >= 12);
});

for (const [name, expected] of checkpoints.ok) {
  test(`${name}: tensors, config and training state equal what torch.save was given`, async () => {
    const ckpt = await readTorchCheckpoint(path(name));
    assert.deepEqual(ckpt.config, expected.config);
    assert.equal(ckpt.iterNum, expected.iterNum);
    assert.equal(ckpt.bestValLoss, expected.bestValLoss);
    assert.equal(ckpt.storedDType, expected.storedDType);

    const tensors = JSON.parse(readFileSync(path(expected.tensors), 'utf8')) as Record<string, { shape: number[]; values: number[] }>;
    assert.deepEqual([...ckpt.tensors.keys()], Object.keys(tensors), 'same names in state_dict order');
    for (const [tensorName, want] of Object.entries(tensors)) {
      const got = ckpt.tensors.get(tensorName);
      assert.ok(got !== undefined, tensorName);
      assert.deepEqual(got.shape, want.shape, tensorName);
      assert.ok(got.data instanceof Float32Array);
      assert.equal(got.data.length, want.values.length, tensorName);
      for (let i = 0; i < want.values.length; i++) {
        if (got.data[i] !== want.values[i]) assert.fail(`${tensorName}[${i}] is ${got.data[i]}, Python had ${want.values[i]}`);
      }
    }
    // Ready for the model: the lm_head and the causal-mask buffers are gone, real biases kept.
    assert.doesNotThrow(() => assembleWeights(ckpt.config, ckpt.tensors, name));
    assert.equal(ckpt.tensors.has('lm_head.weight'), false);
    assert.equal(ckpt.tensors.has('transformer.h.0.attn.bias'), false);
    assert.equal(ckpt.tensors.has('transformer.h.0.attn.c_attn.bias'), expected.config.bias);
  });
}

for (const [name, expected] of checkpoints.failing) {
  test(`${name}: refused with ${expected.code} naming ${expected.includes.join(', ')}`, async () => {
    rmSync(manifest.marker, { force: true });
    await assertRejects(readTorchCheckpoint(path(name)), expected, name);
    assert.equal(existsSync(manifest.marker), false, 'a payload ran');
  });
}

test('the views fixture really holds offset, strided and expanded tensors', async () => {
  // Guards the test above: were the views saved contiguous, the gather code would go untested.
  const zip = await ZipReader.open(path('ckpt_views.pt'));
  const views = new Map<string, { offset: unknown; stride: unknown[] }>();
  try {
    const state = unpickle(await zip.read('ckpt_views/data.pkl'), {
      globals: [
        ORDERED_DICT_GLOBAL,
        {
          module: 'torch._utils',
          name: '_rebuild_tensor_v2',
          call: (args) => ({ offset: args[1], stride: [...(args[3] as PickleTuple).items] }),
        },
        { module: 'torch', name: 'FloatStorage' },
      ],
      persistentLoad: () => null,
    }) as Map<string, Map<string, { offset: unknown; stride: unknown[] }>>;
    for (const [name, view] of state.get('model') ?? []) views.set(name, view);
  } finally {
    zip.close();
  }
  assert.deepEqual(views.get('transformer.wpe.weight'), { offset: 7, stride: [4, 1] });
  assert.deepEqual(views.get('transformer.h.0.attn.c_attn.weight'), { offset: 0, stride: [1, 12] });
  assert.deepEqual(views.get('transformer.h.0.mlp.c_fc.weight'), { offset: 4, stride: [8, 1] });
  assert.deepEqual(views.get('transformer.h.0.ln_1.weight'), { offset: 0, stride: [0] });
  assert.deepEqual(views.get('transformer.h.0.ln_2.bias'), { offset: 1, stride: [3] });
  assert.deepEqual(views.get('transformer.h.0.mlp.c_proj.weight'), { offset: 43, stride: [80, 2] });
});

test('optimizer storages are never read', async () => {
  // In this copy every optimizer storage entry is 7 bytes of garbage; reading any would fail.
  const garbage = await readTorchCheckpoint(path('ckpt_optimizer_garbage.pt'));
  const basic = await readTorchCheckpoint(path('ckpt_basic.pt'));
  assert.deepEqual([...garbage.tensors.keys()], [...basic.tensors.keys()]);
  for (const [name, tensor] of basic.tensors) assert.deepEqual(garbage.tensors.get(name)?.data, tensor.data);
});

test('a missing file is a MicroGPTError naming it', async () => {
  await assertRejects(readTorchCheckpoint(path('no-such.pt')), { code: 'ERR_BAD_CHECKPOINT', includes: ['cannot read'] }, 'no-such.pt');
  await assertRejects(readMetaPkl(path('no-such.pkl')), { code: 'ERR_BAD_CHECKPOINT', includes: ['cannot read'] }, 'no-such.pkl');
});

test('a pickle is not taken for a checkpoint', async () => {
  await assertRejects(readTorchCheckpoint(path('meta.pkl')), { code: 'ERR_BAD_CHECKPOINT', includes: ['plain pickle'] }, 'meta.pkl');
});

for (const [name, expected] of metas.ok) {
  test(`${name}: the vocabulary is itos in id order`, async () => {
    assert.deepEqual(await readMetaPkl(path(name)), expected.chars);
  });
}

for (const [name, expected] of metas.failing) {
  test(`${name}: refused with ${expected.code} naming ${expected.includes.join(', ')}`, async () => {
    await assertRejects(readMetaPkl(path(name)), expected, name);
  });
}
