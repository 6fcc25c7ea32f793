/**
 * nanoGPT checkpoints and meta.pkl files that PyTorch and pickle wrote
 * (scripts/make_pickle_fixtures.py), read without Python: tensors must equal the values torch.save
 * was given, and every damaged or unsupported file must be refused with a message naming the cause.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { MicroGPTError } from '../lib/errors.js';
import { ORDERED_DICT_GLOBAL, type PickleTuple, unpickle } from '../lib/formats/pickle.js';
import { readMetaPkl, readTorchCheckpoint } from '../lib/formats/torch-checkpoint.js';
import { ZipReader } from '../lib/formats/zip.js';
import { assembleWeights } from '../lib/weights.js';
import { deflatedZeros, entriesOf, writeZip, type ArchiveEntry } from './fixtures/hostile/archives.js';
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
    await zip.close();
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

// ---- hostile checkpoints, built from tiny-bias ---------------------------------------------------

const hostileDir = mkdtempSync(join(tmpdir(), 'microgpt-ckpt-'));
after(() => rmSync(hostileDir, { recursive: true, force: true }));
const tinyBias = fixture('models', 'tiny-bias', 'ckpt.pt');

/** tiny-bias re-zipped with data.pkl edited by `edit` and entries replaced by `replace`. */
async function hostileCheckpoint(name: string, edit: (pickle: Buffer) => Buffer, replace: (entry: ArchiveEntry) => ArchiveEntry = (e) => e): Promise<string> {
  const entries = (await entriesOf(tinyBias)).map((entry) =>
    replace(entry.name === 'ckpt/data.pkl' ? { name: entry.name, data: edit(Buffer.from(entry.data)) } : entry),
  );
  const path = join(hostileDir, name);
  writeFileSync(path, writeZip(entries));
  return path;
}

/** Every occurrence of `from` in `bytes` replaced by `to`; there must be `count`. */
function replaceAll(bytes: Buffer, from: Buffer, to: Buffer, count: number): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (let found = bytes.indexOf(from); found >= 0; found = bytes.indexOf(from, at)) {
    parts.push(bytes.subarray(at, found), to);
    at = found + from.length;
  }
  assert.equal(parts.length / 2, count, `${JSON.stringify(from.toString('latin1'))} occurs ${parts.length / 2} times`);
  parts.push(bytes.subarray(at));
  return Buffer.concat(parts);
}

/** BININT: a 4-byte little-endian int in a pickle. */
function binint(value: number): Buffer {
  const out = Buffer.alloc(5);
  out[0] = 0x4a;
  out.writeInt32LE(value, 1);
  return out;
}

// The storage of transformer.wte.weight (also that of the tied lm_head and of their Adam moments)
// holds 65 × 32 = 2,080 float32 elements; declaring it 2,080 + 1,500 MiB / 4 keeps the views valid.
const HUGE_NUMEL = 2080 + (1500 * 1024 * 1024) / 4;
const declareHugeStorages = (pickle: Buffer) =>
  replaceAll(pickle, Buffer.from('M \x08t', 'latin1'), Buffer.concat([binint(HUGE_NUMEL), Buffer.from('t')]), 4);
/** Its entry: the real 8,320 bytes, then 1,500 MiB of zeros, in about 1.5 MB of deflate. */
const hugeWte = (entry: ArchiveEntry): ArchiveEntry =>
  entry.name === 'ckpt/data/0'
    ? { name: entry.name, data: entry.data, method: 8, compressed: deflatedZeros(entry.data, 1500), size: HUGE_NUMEL * 4, crc: 0 }
    : entry;

test('a deflated storage declaring 1,500 MiB costs only what its tensor views need', async () => {
  const original = await readTorchCheckpoint(tinyBias);
  // The CRC declared is not that of the whole entry: a prefix read cannot check it, and does not.
  const path = await hostileCheckpoint('huge-storage.pt', declareHugeStorages, hugeWte);
  const inflated: number[] = [];
  const close = ZipReader.prototype.close;
  ZipReader.prototype.close = function (this: ZipReader) {
    inflated.push(this.inflatedBytes);
    return close.call(this);
  };
  let loaded: Awaited<ReturnType<typeof readTorchCheckpoint>>;
  try {
    loaded = await readTorchCheckpoint(path);
  } finally {
    ZipReader.prototype.close = close;
  }
  assert.deepEqual(loaded.tensors, original.tensors);
  assert.equal(inflated.length, 1);
  assert.ok((inflated[0] as number) < 1024 * 1024, `inflated ${inflated[0]} bytes to use 8,320`);
});

test('the views of a deflated storage may not reach far past the elements they hold', async () => {
  // The embedding's view moved to the end of its 1,500 MiB storage: reading it would inflate it all.
  const path = await hostileCheckpoint(
    'far-view.pt',
    (pickle) => replaceAll(declareHugeStorages(pickle), Buffer.from('QK\x00KAK ', 'latin1'), Buffer.concat([Buffer.from('Q'), binint(HUGE_NUMEL - 2080), Buffer.from('KAK ')]), 4),
    hugeWte,
  );
  await assert.rejects(readTorchCheckpoint(path), (err: unknown) => {
    assert.ok(err instanceof MicroGPTError);
    assert.match(err.message, /the views of the deflated storage "ckpt\/data\/0" reach 1572872320 bytes of it to use \d+; views that skip this much are not supported/);
    return true;
  });
});

test('names from the file are quoted in messages, which stay one line', async () => {
  const cases: [string, (pickle: Buffer) => Buffer, RegExp][] = [
    [
      'tensor-name.pt',
      (pickle) => replaceAll(pickle, Buffer.from('transformer.wte.weight'), Buffer.from('transformer.wte\nweight'), 1),
      /unexpected tensor "transformer.wte\\nweight" for a model/,
    ],
    [
      'storage-key.pt',
      (pickle) => replaceAll(pickle, Buffer.from('X\x01\x00\x00\x000q', 'latin1'), Buffer.from('X\x01\x00\x00\x00\nq', 'latin1'), 1),
      /storage of tensor "transformer.wte.weight" is missing \(no zip entry "ckpt\/data\/\\n"\)/,
    ],
  ];
  for (const [name, edit, pattern] of cases) {
    const path = await hostileCheckpoint(name, edit);
    await assert.rejects(readTorchCheckpoint(path), (err: unknown) => {
      assert.ok(err instanceof MicroGPTError);
      assert.ok(!/[\n\r]/.test(err.message), JSON.stringify(err.message));
      assert.match(err.message, pattern);
      return true;
    });
  }
});
