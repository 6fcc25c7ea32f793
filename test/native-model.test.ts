// The native engine against PyTorch and the js backend: logits, greedy and seeded text, the KV
// cache in any chunking, thread-count independence, every instruction set, and bad input.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { availableBackends } from '../lib/backends/index.js';
import { jsBackend } from '../lib/backends/js/index.js';
import { loadAddon, type AddonIsa, type AddonTensor } from '../lib/backends/native/binding.js';
import { addonTensors, nativeBackend } from '../lib/backends/native/index.js';
import type { ModelConfig } from '../lib/config.js';
import type { TopKRequest } from '../lib/backends/types.js';
import { loadModel, MicroGPTError, readModelFile, type Model } from '../lib/index.js';
import { checkKvCacheChunking, expected, expectedLogits, fixture, maxAbsDiff, MODEL_NAMES, randomTestWeights, runChild } from './helpers.js';

const load = loadAddon();
const supported: AddonIsa[] = load.addon?.cpu().supported ?? [];

test('the native backend is available (CI builds it from source; a failed build fails here)', () => {
  const native = availableBackends().find((b) => b.name === 'native');
  assert.equal(native?.available, true, `native unavailable: ${native?.reason}`);
  assert.equal(load.reason, null);
});

test('without a binary, native is unavailable with an actionable reason and auto falls back to js', () => {
  // PREBUILDS_ONLY makes node-gyp-build ignore build/Release, as if nothing had been built.
  const script = `
    const m = await import(${JSON.stringify(new URL('../lib/index.js', import.meta.url).href)});
    const native = m.availableBackends().find((b) => b.name === 'native');
    let error = null;
    try { await m.loadModel(${JSON.stringify(fixture('models', 'tiny-bias'))}, { backend: 'native' }); } catch (e) { error = e.code + ': ' + e.message; }
    const auto = await m.loadModel(${JSON.stringify(fixture('models', 'tiny-bias'))});
    console.log(JSON.stringify({ native, error, auto: auto.backend }));`;
  const r = runChild(script, { PREBUILDS_ONLY: '1' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { native: { available: boolean; reason: string }; error: string; auto: string };
  assert.equal(out.native.available, false);
  assert.match(out.native.reason, /no native binary for .*`npm run build:native`/);
  assert.match(out.error, /^ERR_BACKEND_UNAVAILABLE: backend 'native' is not available: no native binary/);
  assert.equal(out.auto, 'js');
});

/** Runs `fn` with MICROGPT_ISA set, restoring it afterwards. */
async function withIsa<T>(isa: AddonIsa, fn: () => Promise<T>): Promise<T> {
  const old = process.env['MICROGPT_ISA'];
  process.env['MICROGPT_ISA'] = isa;
  try {
    return await fn();
  } finally {
    if (old === undefined) delete process.env['MICROGPT_ISA'];
    else process.env['MICROGPT_ISA'] = old;
  }
}

for (const name of MODEL_NAMES) {
  const e = expected(name);
  for (const isa of supported) {
    describe(`${name} on native/${isa}`, () => {
      let model: Model;
      let js: Model;
      before(async () => {
        model = await withIsa(isa, () => loadModel(fixture(e.checkpoint), { backend: 'native' }));
        js = await loadModel(fixture(e.checkpoint), { backend: 'js' });
      });
      after(() => {
        model.dispose();
        js.dispose();
      });

      test('logits of every position match PyTorch and the js backend within 1e-4', async () => {
        assert.equal(model.backend, 'native');
        const logits = await model.logits(e.logits.ids);
        assert.ok(maxAbsDiff(logits, expectedLogits(e)) < 1e-4, `vs torch: ${maxAbsDiff(logits, expectedLogits(e))}`);
        const ref = await js.logits(e.logits.ids);
        assert.ok(maxAbsDiff(logits, ref) < 1e-4, `vs js: ${maxAbsDiff(logits, ref)}`);
      });

      test(`greedy decoding of ${e.greedy.maxNewTokens} tokens (past blockSize) is nanoGPT's text`, async () => {
        const text = await model.generate(e.greedy.prompt, { temperature: 0, maxNewTokens: e.greedy.maxNewTokens });
        assert.equal(text, e.greedy.continuation);
      });

      test('the same seed gives the same text as the js backend (and PyTorch)', async () => {
        for (const s of e.sampled) {
          const opts = { seed: s.seed, temperature: s.temperature, topK: s.topK, ...(s.topP === null ? {} : { topP: s.topP }) };
          const text = await model.generate(e.greedy.prompt, { ...opts, maxNewTokens: s.maxNewTokens });
          assert.equal(text, s.continuation);
        }
        for (const seed of [1, 2, 3]) {
          const opts = { seed, temperature: 1, maxNewTokens: 40 };
          assert.equal(await model.generate('a', opts), await js.generate('a', opts), `seed ${seed}`);
        }
      });
    });
  }

  test(`${name}: the native KV cache gives the logits of a full forward pass bit for bit, in any chunking`, async () => {
    const file = await readModelFile(fixture(e.checkpoint));
    const runtime = await nativeBackend.load(file.config, file.weights);
    const ids = Int32Array.from(e.logits.ids);
    const T = ids.length;
    // Exact: every kernel computes a row the same way whatever rows it is given with.
    await checkKvCacheChunking(runtime, ids, [[1, 3, ...Array<number>(T - 4).fill(1)], [2, 5, T - 7], [T]], 0);
    runtime.dispose();
  });
}

// ---- a random model wide enough that the work is split across threads ----------------------

describe('a random 2-layer, 192-wide model (work split across threads)', () => {
  const config: ModelConfig = { vocabSize: 65, blockSize: 64, nLayer: 2, nHead: 6, nEmbd: 192, bias: true };
  const weights = randomTestWeights(config, 42);
  const ids = Int32Array.from({ length: 64 }, (_, i) => (i * 7 + 3) % 65);

  test('js and native agree within 1e-4 on every position', async () => {
    const js = await jsBackend.load(config, weights);
    const native = await nativeBackend.load(config, weights);
    const d = maxAbsDiff(await native.forward(ids), await js.forward(ids));
    assert.ok(d < 1e-4, `${d}`);
    native.dispose();
  });

  for (const isa of supported) {
    test(`${isa}: threads=1 and threads=2 give bit-identical logits, prefill and decode`, async () => {
      const one = await nativeBackend.load(config, weights, { threads: 1, isa });
      const two = await nativeBackend.load(config, weights, { threads: 2, isa });
      assert.equal(two.threads, 2);
      assert.deepEqual(await one.forward(ids), await two.forward(ids));
      const s1 = one.createSession();
      const s2 = two.createSession();
      assert.deepEqual(await s1.prefill(ids.subarray(0, 40)), await s2.prefill(ids.subarray(0, 40)));
      for (let i = 40; i < 64; i++) assert.deepEqual(await s1.decode(ids[i] as number), await s2.decode(ids[i] as number));
      one.dispose();
      two.dispose();
    });
  }
});

describe('bad input gives errors, not crashes', () => {
  const e = expected('tiny-bias');
  let model: Model;
  before(async () => {
    model = await loadModel(fixture(e.checkpoint), { backend: 'native' });
  });
  after(() => model.dispose());

  test('token ids out of range, wrong array types, wrong lengths', async () => {
    const file = await readModelFile(fixture(e.checkpoint));
    const runtime = await nativeBackend.load(file.config, file.weights);
    await assert.rejects(runtime.forward(Int32Array.of(1, 65)), /ids\[1\] = 65 is not a token id/);
    await assert.rejects(runtime.forward(Int32Array.of(-1)), /is not a token id/);
    await assert.rejects(runtime.forward(new Int32Array(0)), /empty/);
    await assert.rejects(runtime.forward(new Int32Array(file.config.blockSize + 1)), /exceeds blockSize/);
    await assert.rejects(runtime.forward(new Float32Array(2) as unknown as Int32Array), /Int32Array/);
    const session = runtime.createSession();
    await assert.rejects(session.prefill(Int32Array.of(70)), /not a token id/);
    await assert.rejects(session.decode(1.5e9), /not a token id/);
    assert.equal(session.length, 0);
    await session.prefill(new Int32Array(file.config.blockSize).fill(3));
    await assert.rejects(session.decode(1), /exceeds blockSize/);
    session.dispose();
    runtime.dispose();
    await assert.rejects(model.logits([1, 99]), /not a token id/);
  });

  test('a disposed model or session is an ERR_DISPOSED error', async () => {
    const file = await readModelFile(fixture(e.checkpoint));
    const runtime = await nativeBackend.load(file.config, file.weights);
    const session = runtime.createSession();
    const other = runtime.createSession();
    session.dispose();
    await assert.rejects(session.prefill(Int32Array.of(1)), (err: unknown) => err instanceof MicroGPTError && err.code === 'ERR_DISPOSED');
    runtime.dispose();
    runtime.dispose(); // twice is fine
    await assert.rejects(runtime.forward(Int32Array.of(1)), (err: unknown) => err instanceof MicroGPTError && err.code === 'ERR_DISPOSED');
    await assert.rejects(other.decode(1), (err: unknown) => err instanceof MicroGPTError && err.code === 'ERR_DISPOSED');
    assert.throws(() => runtime.createSession(), (err: unknown) => err instanceof MicroGPTError && err.code === 'ERR_DISPOSED');
  });

  test('dispose while a pass is running: the pass finishes, the memory goes afterwards', async () => {
    const file = await readModelFile(fixture(e.checkpoint));
    const runtime = await nativeBackend.load(file.config, file.weights);
    const session = runtime.createSession();
    const pending = [runtime.forward(Int32Array.of(1, 2, 3)), session.prefill(Int32Array.of(4, 5))];
    session.dispose();
    runtime.dispose();
    const [all, last] = await Promise.all(pending);
    assert.equal(all?.length, 3 * 65);
    assert.equal(last?.length, 65);
  });

  test('the raw addon checks its arguments too (defence in depth)', async () => {
    const addon = load.addon!;
    const file = await readModelFile(fixture(e.checkpoint));
    const config = file.config;
    assert.throws(() => new addon.Model({ ...config, nEmbd: 33 }, { threads: 1 }), /multiple of nHead/);
    assert.throws(() => new addon.Model({ ...config, nLayer: 0 }, { threads: 1 }), /positive integer/);
    assert.throws(() => new addon.Model(config, { threads: 1, isa: 'mmx' as AddonIsa }), /unknown instruction set/);
    const m = new addon.Model(config, { threads: 1 });
    assert.throws(() => m.forward(Int32Array.of(1)), /not loaded/);
    const tensors = addonTensors(config, file.weights);
    const [wte, wpe] = tensors as [AddonTensor, AddonTensor];
    assert.throws(() => m.load([]), new RegExp(`expected ${tensors.length} tensors, got 0`));
    assert.throws(() => m.load(tensors.map(() => null as unknown as AddonTensor)), /tensor 0 \(transformer\.wte\.weight\) must be an object/);
    assert.throws(() => m.load(tensors.map((t) => ({ ...t, data: null as unknown as Float32Array }))), /data must be a Float32Array/);
    assert.throws(() => m.load([{ ...wte, data: wpe.data }, ...tensors.slice(1)]), /tensor 0 \(transformer\.wte\.weight\) has \d+ elements, expected \d+/);
    // Checked by name and shape, not just length: two tensors of one size swapped are refused.
    const swap = (i: number, j: number) => tensors.map((t, k) => (k === i ? tensors[j] : k === j ? tensors[i] : t) as AddonTensor);
    const index = (name: string) => tensors.findIndex((t) => t.name === name);
    assert.throws(
      () => m.load(swap(index('transformer.h.0.mlp.c_fc.weight'), index('transformer.h.0.mlp.c_proj.weight'))),
      /tensor \d+ \(transformer\.h\.0\.mlp\.c_fc\.weight\): got a tensor named "transformer\.h\.0\.mlp\.c_proj\.weight"/,
    );
    assert.throws(() => m.load(swap(index('transformer.h.0.ln_1.weight'), index('transformer.h.0.ln_1.bias'))), /got a tensor named/);
    const fc = index('transformer.h.0.mlp.c_fc.weight');
    const transposed = tensors.map((t, k) => (k === fc ? { ...t, shape: [...t.shape].reverse() } : t));
    assert.throws(() => m.load(transposed), /\(transformer\.h\.0\.mlp\.c_fc\.weight\) must have shape \[\d+, \d+\]/);
    await m.load(tensors);
    const s = m.createSession();
    const first = s.append(Int32Array.of(1));
    assert.throws(() => s.append(Int32Array.of(2)), /still running/);
    assert.throws(() => s.reset(), /while its prefill is running/);
    await first;
    // A request for top-k candidates: the CPU engine gives the logits, but the request is checked.
    const V = config.vocabSize;
    const bad = (select: unknown) => s.append(Int32Array.of(2), select as TopKRequest);
    assert.throws(() => bad(5), /select must be an object \{ topK, limit \}/);
    assert.throws(() => bad({ topK: '3', limit: V }), /select\.topK and select\.limit must be integers/);
    for (const select of [{ topK: 0, limit: V }, { topK: 3, limit: V + 1 }, { topK: 3, limit: 3 }, { topK: 1.5, limit: V }]) {
      assert.throws(() => bad(select), new RegExp(`0 < topK < limit <= vocabSize \\(${V}\\)`), JSON.stringify(select));
    }
    assert.throws(() => m.appendMany([s], [Int32Array.of(2)], [] as TopKRequest[]), /one entry per session/);
    const logits = await s.append(Int32Array.of(2), { topK: 3, limit: V });
    assert.ok(logits instanceof Float32Array && logits.length === V, 'the CPU engine gives the logits');
    assert.throws(() => new addon.Session() as unknown, /createSession/);
    m.dispose();
    assert.throws(() => s.append(Int32Array.of(1)), /disposed/);
  });
});
