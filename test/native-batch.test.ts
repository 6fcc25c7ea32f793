// Batched decoding in the native engine: sessions in flight together share one forward pass
// (continuous batching), and every row comes out bit-identical to running it alone, so texts do
// not depend on how requests happened to be grouped.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadAddon, type AddonIsa } from '../lib/backends/native/binding.js';
import { addonTensors, nativeBackend, type NativeRuntime, type NativeRuntimeOptions } from '../lib/backends/native/index.js';
import type { InferenceSession } from '../lib/backends/types.js';
import type { ModelConfig } from '../lib/config.js';
import { generateSample, planGeneration, type GenerationResult } from '../lib/generate.js';
import { CharTokenizer, createModel, loadModel, MicroGPTError, readModelFile } from '../lib/index.js';
import type { ModelWeights } from '../lib/weights.js';
import { expected, fixture, MODEL_NAMES, randomTestWeights } from './helpers.js';

const load = loadAddon();

async function loadRuntime(config: ModelConfig, weights: ModelWeights, options?: NativeRuntimeOptions): Promise<NativeRuntime> {
  return (await nativeBackend.load(config, weights, options)) as NativeRuntime;
}
const supported: AddonIsa[] = load.addon?.cpu().supported ?? [];

// Wide enough that the matmuls split across threads and the vocabulary is not a whole number of
// panels; block 48 is below the 64-request bound, so a batch can hold more rows than blockSize.
const CONFIG: ModelConfig = { vocabSize: 67, blockSize: 48, nLayer: 2, nHead: 6, nEmbd: 192, bias: true };
const WEIGHTS = randomTestWeights(CONFIG, 11);
const VOCAB = Array.from({ length: 67 }, (_, i) => String.fromCharCode(48 + i));

/** The token session i feeds at step j, and its prompt: different per session. */
const tokenAt = (i: number, j: number) => (i * 7 + j * 13 + 3) % CONFIG.vocabSize;
const promptOf = (i: number) => Int32Array.from({ length: 1 + (i % 5) }, (_, j) => tokenAt(i, 100 + j));

/**
 * Every logits array of `n` sessions, each prefilled with its prompt then decoding `steps` tokens.
 * together: all sessions step at once (batched); else one session, one call at a time (batch 1).
 */
async function trace(runtime: NativeRuntime, n: number, steps: number, together: boolean): Promise<Float32Array[][]> {
  const sessions = Array.from({ length: n }, () => runtime.createSession());
  const out: Float32Array[][] = sessions.map(() => []);
  const step = async (i: number, j: number) => {
    const s = sessions[i] as InferenceSession;
    const logits = j === 0 ? await s.prefill(promptOf(i)) : await s.decode(tokenAt(i, j));
    (out[i] as Float32Array[]).push(logits.slice());
  };
  for (let j = 0; j <= steps; j++) {
    if (together) await Promise.all(sessions.map((_, i) => step(i, j)));
    else for (let i = 0; i < n; i++) await step(i, j);
  }
  sessions.forEach((s) => s.dispose());
  return out;
}

function assertSameLogits(got: Float32Array[][], want: Float32Array[][], what: string): void {
  assert.equal(got.length, want.length);
  got.forEach((rows, i) =>
    rows.forEach((row, j) => assert.deepEqual(row, (want[i] as Float32Array[])[j], `${what}: session ${i}, step ${j}`)),
  );
}

describe('batched decoding', () => {
  test('every matmul tile gives each row bit for bit what the one-row GEMV gives', () => {
    const t = load.addon!.testing;
    const K = 77, N = 200; // a partial last panel, and K not a multiple of any vector
    const W = Float32Array.from({ length: N * K }, (_, i) => Math.sin(0.7 * i) * 0.3);
    const b = Float32Array.from({ length: N }, (_, i) => Math.cos(0.3 * i) * 0.1);
    const row = (r: number) => Float32Array.from({ length: K }, (_, k) => Math.sin(0.11 * (k + 1) * (r + 1)));
    for (const isa of supported) {
      for (const epilogue of [0, 1, 2] as const) {
        const alone = Array.from({ length: 20 }, (_, r) => {
          const out = Float32Array.from({ length: N }, (_, j) => j * 0.01);
          t.matmul(isa, out, row(r), W, b, 1, K, N, epilogue);
          return out;
        });
        for (let T = 2; T <= 20; T++) {
          const x = new Float32Array(T * K);
          for (let r = 0; r < T; r++) x.set(row(r), r * K);
          const out = Float32Array.from({ length: T * N }, (_, i) => (i % N) * 0.01);
          t.matmul(isa, out, x, W, b, T, K, N, epilogue);
          for (let r = 0; r < T; r++) {
            assert.deepEqual(out.subarray(r * N, (r + 1) * N), alone[r], `${isa}, epilogue ${epilogue}, T ${T}, row ${r}`);
          }
        }
      }
    }
  });

  for (const isa of supported) {
    test(`${isa}: batched rows are bit-identical to one at a time, for 2 to 70 sessions (and 1 or 2 threads)`, async () => {
      for (const threads of [1, 2]) {
        const runtime = await loadRuntime(CONFIG, WEIGHTS, { isa, threads });
        const want = await trace(runtime, 70, 6, false);
        const before = runtime.batchStats;
        assert.equal(before.largestBatch, 1);
        const counts = [2, 3, 7, 8, 9, 12, 13, 70];
        for (const n of counts) {
          const got = await trace(runtime, n, 6, true);
          assertSameLogits(got, want.slice(0, n), `${isa}, ${threads} threads, ${n} sessions`);
        }
        const after = runtime.batchStats;
        // Proof of batching: 7 rounds of 2 + 3 + ... + 70 requests took far fewer passes, none
        // larger than the bound of 64.
        const requests = 7 * counts.reduce((a, b) => a + b);
        assert.equal(after.requests - before.requests, requests);
        assert.equal(after.largestBatch, 64);
        assert.ok(after.passes - before.passes <= 7 * 12, `${after.passes - before.passes} passes for ${requests} requests`);
        runtime.dispose();
      }
    });
  }

  for (const name of MODEL_NAMES) {
    const e = expected(name);
    test(`${name}: generateMany's samples are PyTorch's, batched, and each is what it is alone`, async () => {
      const model = await loadModel(fixture(e.checkpoint), { backend: 'native' });
      for (const s of e.sampled) {
        const opts = { seed: s.seed, temperature: s.temperature, topK: s.topK, ...(s.topP === null ? {} : { topP: s.topP }) };
        const many = await model.generateMany(e.greedy.prompt, { ...opts, maxNewTokens: s.samples.maxNewTokens, numSamples: 3 });
        assert.deepEqual(many, s.samples.continuations);
      }
      model.dispose();

      // 8 samples in flight together (batched) against the same 8 sample streams one at a time.
      const file = await readModelFile(fixture(e.checkpoint));
      const runtime = await loadRuntime(file.config, file.weights);
      const tokenizer = new CharTokenizer(file.vocab);
      const promptIds = tokenizer.encode(e.greedy.prompt);
      const plan = planGeneration({ seed: 5, temperature: 1, maxNewTokens: 3 * file.config.blockSize, numSamples: 8 }, tokenizer.size, file.config.blockSize);
      const drain = async (i: number): Promise<GenerationResult> => {
        const gen = generateSample(runtime, tokenizer, promptIds, plan, i);
        for (;;) {
          const step = await gen.next();
          if (step.done === true) return step.value;
        }
      };
      const alone: GenerationResult[] = [];
      for (let i = 0; i < 8; i++) alone.push(await drain(i));
      const before = runtime.batchStats;
      const together = await Promise.all(Array.from({ length: 8 }, (_, i) => drain(i)));
      const after = runtime.batchStats;
      assert.deepEqual(together, alone);
      assert.ok(new Set(alone.map((r) => r.text)).size > 1);
      const B = file.config.blockSize;
      assert.ok(after.largestBatch >= Math.min(8, Math.floor((B + 64) / B)), `largest batch ${after.largestBatch}`);
      // Past blockSize every step is a prefill of the whole window; those are batched too, as
      // many as fit in blockSize + 64 rows.
      const passes = after.passes - before.passes;
      const requests = after.requests - before.requests;
      assert.ok(passes <= requests / 2, `${passes} passes for ${requests} requests: the samples were not batched`);
      runtime.dispose();
    });
  }

  test('prefills and decode steps in flight at once share passes and give the unbatched logits', async () => {
    const runtime = await loadRuntime(CONFIG, WEIGHTS, { threads: 2 });
    const chunk = (i: number, j: number) => Int32Array.from({ length: 1 + ((i + j) % 4) * 3 }, (_, k) => tokenAt(i, 10 * j + k));
    // Sessions 0..5 decode one token a step; sessions 6..9 prefill chunks of 1 to 10 tokens.
    const run = async (together: boolean) => {
      const sessions = Array.from({ length: 10 }, () => runtime.createSession());
      const out: Float32Array[] = [];
      for (let j = 0; j < 4; j++) {
        const call = (i: number) => {
          const s = sessions[i] as InferenceSession;
          return i < 6 ? s.decode(tokenAt(i, j)) : s.prefill(chunk(i, j));
        };
        if (together) {
          const logits = await Promise.all(sessions.map((_, i) => call(i)));
          out.push(...logits.map((l) => l.slice()));
        } else {
          for (let i = 0; i < 10; i++) out.push((await call(i)).slice());
        }
      }
      sessions.forEach((s) => s.dispose());
      return out;
    };
    const want = await run(false);
    const before = runtime.batchStats;
    const got = await run(true);
    const after = runtime.batchStats;
    got.forEach((l, i) => assert.deepEqual(l, want[i], `call ${i}`));
    assert.equal(after.requests - before.requests, 40);
    assert.ok(after.passes - before.passes <= 8, `${after.passes - before.passes} passes for 40 requests`);
    // A forward of every position runs alone, beside the batches, and is the same too.
    const ids = Int32Array.from({ length: 20 }, (_, k) => tokenAt(3, k));
    const full = await runtime.forward(ids);
    const [again] = await Promise.all([runtime.forward(ids), run(true)]);
    assert.deepEqual(again, full);
    runtime.dispose();
  });

  test("a freed KV cache is reused, and one full of another sequence gives a fresh cache's logits", async () => {
    const runtime = await loadRuntime(CONFIG, WEIGHTS, { threads: 2 });
    const fresh = await loadRuntime(CONFIG, WEIGHTS, { threads: 2 });
    // Fill a cache to blockSize with another sequence, then free it.
    const filler = runtime.createSession();
    await filler.prefill(Int32Array.from({ length: CONFIG.blockSize }, (_, k) => tokenAt(9, 3 * k)));
    filler.dispose();
    assert.equal(runtime.batchStats.cachesAllocated, 1);

    assertSameLogits(await trace(runtime, 1, 10, false), await trace(fresh, 1, 10, false), 'reused cache');
    assert.equal(runtime.batchStats.cachesAllocated, 1, 'sessions one after another share one cache');
    assertSameLogits(await trace(runtime, 3, 4, true), await trace(fresh, 3, 4, true), 'reused caches, batched');
    assert.equal(runtime.batchStats.cachesAllocated, 3, 'three sessions at once: one cache reused, two made');
    const ids = Int32Array.from({ length: 30 }, (_, k) => tokenAt(4, k));
    assert.deepEqual(await runtime.forward(ids), await fresh.forward(ids));
    assert.equal(runtime.batchStats.cachesAllocated, 3, 'a forward pass borrows a cache too');
    runtime.dispose();
    fresh.dispose();
  });

  test('disposing one session while others are batched: its pass still ends, the others are unaffected', async () => {
    const runtime = await loadRuntime(CONFIG, WEIGHTS, { threads: 2 });
    const want = await trace(runtime, 5, 3, false);
    const sessions = Array.from({ length: 5 }, () => runtime.createSession());
    await Promise.all(sessions.map((s, i) => s.prefill(promptOf(i))));
    for (let j = 1; j <= 3; j++) {
      const pending = sessions.map((s, i) => (j > 1 && i === 2 ? null : s.decode(tokenAt(i, j))));
      if (j === 1) sessions[2]?.dispose(); // queued, not yet handed to the engine
      const logits = await Promise.all(pending);
      logits.forEach((l, i) => {
        if (l !== null) assert.deepEqual(l, (want[i] as Float32Array[])[j], `session ${i}, step ${j}`);
      });
    }
    await assert.rejects(sessions[2]!.decode(1), (err: unknown) => err instanceof MicroGPTError && err.code === 'ERR_DISPOSED');
    // The model disposed with steps queued and running: they finish, later calls fail.
    const last = sessions.map((s, i) => (i === 2 ? null : s.decode(tokenAt(i, 4))));
    runtime.dispose();
    for (const l of await Promise.all(last)) if (l !== null) assert.equal(l.length, CONFIG.vocabSize);
    await assert.rejects(sessions[0]!.decode(1), (err: unknown) => err instanceof MicroGPTError && err.code === 'ERR_DISPOSED');
  });

  test('a session refuses a reset or a second call while a call is queued, as while one runs', async () => {
    const runtime = await loadRuntime(CONFIG, WEIGHTS, { threads: 1 });
    const s = runtime.createSession();
    const first = s.prefill(Int32Array.of(1, 2));
    assert.throws(() => s.reset(), /while its prefill is running/);
    await assert.rejects(s.decode(3), /still running/);
    await first;
    assert.equal(s.length, 2);
    s.reset();
    assert.equal(s.length, 0);
    runtime.dispose();
  });

  test('the raw appendMany checks its arguments and rejects a bad pair alone', async () => {
    const addon = load.addon!;
    const tensors = addonTensors(CONFIG, WEIGHTS);
    const m = new addon.Model(CONFIG, { threads: 1 });
    const other = new addon.Model(CONFIG, { threads: 1 });
    await Promise.all([m.load(tensors), other.load(tensors)]);
    const a = m.createSession();
    const b = m.createSession();
    const foreign = other.createSession();
    assert.throws(() => m.appendMany(a as never, [] as never), /must be arrays/);
    assert.throws(() => m.appendMany([a, b], [Int32Array.of(1)]), /2 sessions but 1 id arrays/);
    const results = await Promise.allSettled(
      m.appendMany(
        [a, {} as never, foreign, b, b, a],
        [Int32Array.of(1, 2), Int32Array.of(1), Int32Array.of(1), Int32Array.of(70), Int32Array.of(5), Int32Array.of(3)],
      ),
    );
    const reasons = results.map((r) => (r.status === 'rejected' ? String(r.reason) : 'ok'));
    assert.equal(reasons[0], 'ok');
    assert.match(reasons[1] as string, /sessions\[1\] is not a Session/);
    assert.match(reasons[2] as string, /belongs to another model/);
    assert.match(reasons[3] as string, /not a token id/);
    assert.equal(reasons[4], 'ok');
    assert.match(reasons[5] as string, /still running/);
    assert.equal(a.length, 2);
    assert.equal(b.length, 1);
    const stats = m.stats();
    assert.deepEqual(
      { ...stats, busySeconds: 0, widestLease: 0 },
      { passes: 1, requests: 2, decodeRows: 1, largestBatch: 2, busySeconds: 0, cachesAllocated: 2, sharedPasses: 0, widestLease: 0 },
    );
    assert.ok(stats.busySeconds > 0);
    m.dispose();
    other.dispose();
    assert.throws(() => m.appendMany([a], [Int32Array.of(1)]), /disposed/);
  });

  test('the event loop stays free while 8 samples decode in batches (6 layers x 384)', async (t) => {
    const config: ModelConfig = { vocabSize: 65, blockSize: 256, nLayer: 6, nHead: 6, nEmbd: 384, bias: true };
    const model = await createModel(config, randomTestWeights(config, 7), VOCAB.slice(0, 65), { backend: 'native' });
    const before = performance.eventLoopUtilization();
    const texts = await model.generateMany('0'.repeat(100), { maxNewTokens: 60, temperature: 1, seed: 3, numSamples: 8 });
    const busy = performance.eventLoopUtilization(before);
    model.dispose();
    assert.equal(texts.length, 8);
    t.diagnostic(`event loop busy ${(100 * busy.utilization).toFixed(1)} % of the time`);
    // The main thread only samples; the passes run on the engine's threads.
    assert.ok(busy.utilization < 0.5, `the event loop was busy ${(100 * busy.utilization).toFixed(1)} % of the generation`);
  });
});
