// The CUDA engine's tests, defined once and run twice: against the emulated module (every kernel
// on the CPU: test/cuda-emulated.test.ts, on any Linux checkout) and against the real module on a
// GPU (test/cuda-engine.test.ts). The CPU engine (backend 'native') is the reference throughout,
// and the PyTorch logits of the fixtures; the models are the tiny fixtures and small random ones,
// and generations are short: the emulator runs each kernel's threads as fibers, one block at a time.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cudaStatus, cudaUnavailableReason } from '../lib/backends/cuda.js';
import { loadAddon, type AddonBatchStats, type AddonTesting } from '../lib/backends/native/binding.js';
import type { NativeRuntime } from '../lib/backends/native/index.js';
import type { ModelConfig } from '../lib/config.js';
import type { GenerateOptions, GenerationResult } from '../lib/generate.js';
import { createModel, loadModel, type LoadOptions, type Model } from '../lib/index.js';
import { expected, expectedLogits, fixture, isMicroGPTError, maxAbsDiff, MODEL_NAMES, randomArray, randomTestWeights, runChild } from './helpers.js';

export interface CudaSuiteOptions {
  /** How the titles name the module: 'emulated' or 'GPU'. */
  readonly name: string;
  /** Why the whole suite is skipped (one line), or false. */
  readonly skip: string | false;
  /** The emulated module: its knobs (MICROGPT_CUDA_EMULATED_MEMORY, _DEVICES) are tested. */
  readonly emulated: boolean;
  /** What a child process needs in its environment to open the same module. */
  readonly env: Readonly<Record<string, string>>;
}

/** Logits of the CUDA engine against the CPU engine's and PyTorch's. */
const TOLERANCE = 1e-4;
/** One kernel against the scalar reference: float sums in other orders. */
const KERNEL_TOLERANCE = 1e-5;

const DIST = new URL('../lib/index.js', import.meta.url).href;

/** Loads a fixture on the cuda and the native engine before a suite's tests, disposes both after. */
function bothEngines(checkpoint: string, use: (cuda: Model, native: Model) => void): void {
  let models: Model[] = [];
  before(async () => {
    models = [await loadModel(fixture(checkpoint), { backend: 'cuda' }), await loadModel(fixture(checkpoint), { backend: 'native' })];
    use(models[0]!, models[1]!);
  });
  after(() => {
    for (const m of models) m.dispose();
  });
}

function runtimeOf(model: Model): NativeRuntime {
  return model.runtimeForDiagnostics as NativeRuntime;
}

function statsOf(model: Model): AddonBatchStats {
  return runtimeOf(model).batchStats;
}

/** Runs `fn` with environment variables set (the addon reads them at load, on this thread). */
async function withEnv<T>(env: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const old = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(old)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** Sample `index` of generateMany(prompt, options), generated alone. */
async function alone(model: Model, prompt: string, options: GenerateOptions, index: number): Promise<string> {
  const stream = model.streamObserved(prompt, options, index, () => {});
  for (;;) {
    const step = await stream.next();
    if (step.done === true) return (step.value as GenerationResult).text;
  }
}

/** Largest |a - b| / (1 + |b|): float sums in different orders. */
function relativeDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number)) / (1 + Math.abs(b[i] as number));
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

export function defineCudaSuite(o: CudaSuiteOptions): void {
  describe(`the CUDA engine (${o.name} module)`, { skip: o.skip }, () => {
    test('the module is usable, and auto picks it', async () => {
      assert.equal(cudaUnavailableReason(), null, 'backend cuda is available');
      const status = cudaStatus();
      assert.ok(status !== null && status.devices.some((d) => d.usable));
      if (o.emulated) assert.deepEqual(status.devices.map((d) => [d.name, d.computeCapability]), [['microgpt CUDA emulator (CPU)', '9.0']]);
      const model = await loadModel(fixture('models', 'tiny-bias'));
      assert.equal(model.backend, 'cuda');
      assert.equal(runtimeOf(model).device, 0);
      model.dispose();
    });

    for (const name of MODEL_NAMES) {
      const e = expected(name);
      describe(`${name} on cuda`, () => {
        let cuda: Model;
        let native: Model;
        bothEngines(e.checkpoint, (c, n) => ((cuda = c), (native = n)));

        test('logits of T = 1 and T = blockSize match the CPU engine and PyTorch within 1e-4', async () => {
          assert.equal(cuda.backend, 'cuda');
          assert.equal(cuda.precision, native.precision);
          const ids = e.logits.ids;
          assert.equal(ids.length, e.config.blockSize);
          const logits = await cuda.logits(ids);
          assert.ok(maxAbsDiff(logits, expectedLogits(e)) < TOLERANCE, `vs torch: ${maxAbsDiff(logits, expectedLogits(e))}`);
          assert.ok(maxAbsDiff(logits, await native.logits(ids)) < TOLERANCE, `vs native: ${maxAbsDiff(logits, await native.logits(ids))}`);
          for (const id of [ids[0] as number, 0, e.config.vocabSize - 1]) {
            const one = await cuda.logits([id]);
            assert.ok(maxAbsDiff(one, await native.logits([id])) < TOLERANCE, `T = 1, id ${id}`);
          }
        });

        test('a session (prefill, then decode steps, in any chunking) gives the rows of a full forward pass', async () => {
          const runtime = runtimeOf(cuda);
          const V = e.config.vocabSize;
          const ids = Int32Array.from(e.logits.ids);
          const T = ids.length;
          const full = await runtime.forward(ids);
          for (const chunks of [[3, ...Array<number>(T - 3).fill(1)], [2, 5, T - 7], [T]]) {
            const session = runtime.createSession();
            let at = 0;
            for (const size of chunks) {
              const last = size === 1 ? await session.decode(ids[at] as number) : await session.prefill(ids.subarray(at, at + size));
              at += size;
              assert.equal(session.length, at);
              const d = maxAbsDiff(last, full.subarray((at - 1) * V, at * V));
              assert.ok(d < TOLERANCE, `chunks ${chunks.join(',')}: position ${at - 1}: ${d}`);
            }
            await assert.rejects(session.decode(1), /exceeds blockSize/);
            session.reset();
            const again = await session.prefill(ids.subarray(0, 2));
            assert.ok(maxAbsDiff(again, full.subarray(V, 2 * V)) < TOLERANCE, 'after reset');
            session.dispose();
          }
        });

        test(`greedy decoding past blockSize gives the CPU engine's text (and nanoGPT's), under 'slide' and 'shift'`, async () => {
          const opts = { temperature: 0, maxNewTokens: e.greedy.maxNewTokens };
          const text = await cuda.generate(e.greedy.prompt, opts);
          assert.equal(text, e.greedy.continuation);
          assert.equal(text, await native.generate(e.greedy.prompt, opts));
          const shift = { ...opts, context: 'shift' } as const;
          assert.equal(await cuda.generate(e.greedy.prompt, shift), await native.generate(e.greedy.prompt, shift));
        });

        test('a seeded temperature and top-k sample gives the CPU engine\'s text', async () => {
          const s = e.sampled[0]!;
          const opts = { seed: s.seed, temperature: s.temperature, topK: s.topK, maxNewTokens: s.maxNewTokens };
          const text = await cuda.generate(e.greedy.prompt, opts);
          assert.equal(text, s.continuation);
          assert.equal(text, await native.generate(e.greedy.prompt, opts));
        });
      });
    }

    describe('batching', () => {
      let cuda: Model;
      let native: Model;
      const e = expected('tiny-bias');
      bothEngines(e.checkpoint, (c, n) => ((cuda = c), (native = n)));

      test('generateMany gives the texts of each sample alone, and the CPU engine\'s, in batched passes', async () => {
        const opts = { seed: 5, temperature: 1, topK: 20, maxNewTokens: 12, numSamples: 4 };
        const before = statsOf(cuda);
        const texts = await cuda.generateMany('\n', opts);
        const after = statsOf(cuda);
        assert.ok(after.largestBatch > 1, `largest batch ${after.largestBatch}`);
        assert.ok(after.passes - before.passes < after.requests - before.requests, 'fewer passes than requests');
        assert.deepEqual(texts, await native.generateMany('\n', opts));
        const { numSamples, ...one } = opts;
        for (let i = 0; i < numSamples; i++) assert.equal(await alone(cuda, '\n', one, i), texts[i], `sample ${i}`);
      });

      test('concurrent generate calls give their texts alone, a batch wider than a few rows too', async () => {
        const prompts = Array.from({ length: 20 }, (_, i) => e.greedy.prompt.slice(0, 1 + (i % 5)));
        const opts = (i: number) => ({ seed: 100 + i, temperature: 0.9, maxNewTokens: 6 });
        const together = await Promise.all(prompts.map((p, i) => cuda.generate(p, opts(i))));
        assert.ok(statsOf(cuda).largestBatch >= 16, `largest batch ${statsOf(cuda).largestBatch}`);
        for (let i = 0; i < prompts.length; i += 7) assert.equal(await cuda.generate(prompts[i]!, opts(i)), together[i], `call ${i}`);
        assert.deepEqual(together, await Promise.all(prompts.map((p, i) => native.generate(p, opts(i)))));
      });
    });

    describe('a random 2-layer model, 48 wide in 3 heads, with bias (sizes off the vector width)', () => {
      const config: ModelConfig = { vocabSize: 67, blockSize: 20, nLayer: 2, nHead: 3, nEmbd: 48, bias: true };
      const weights = randomTestWeights(config, 7);
      const vocab = Array.from({ length: 67 }, (_, i) => String.fromCharCode(48 + i));
      const ids = Array.from({ length: 20 }, (_, i) => (i * 11 + 5) % 67);
      const make = (options: Omit<LoadOptions, 'meta'>) => createModel(config, weights, vocab, options);

      test('f32 and f16 logits match the CPU engine in the same precision within 1e-4', async () => {
        for (const precision of ['f32', 'f16'] as const) {
          const cuda = await make({ backend: 'cuda', precision });
          const native = await make({ backend: 'native', precision });
          assert.equal(cuda.precision, precision);
          const d = maxAbsDiff(await cuda.logits(ids), await native.logits(ids));
          assert.ok(d < TOLERANCE, `${precision}: ${d}`);
          const one = maxAbsDiff(await cuda.logits(ids.slice(0, 1)), await native.logits(ids.slice(0, 1)));
          assert.ok(one < TOLERANCE, `${precision}, T = 1: ${one}`);
          cuda.dispose();
          native.dispose();
        }
      });

      test('decode steps replayed from CUDA graphs give the logits of launched kernels, bit for bit', async () => {
        const trace = async (model: Model) => {
          const runtime = runtimeOf(model);
          const sessions = [runtime.createSession(), runtime.createSession()];
          const out: Float32Array[] = [];
          await Promise.all(sessions.map(async (s, i) => out.push((await s.prefill(Int32Array.from(ids.slice(i, i + 3)))).slice())));
          for (let step = 0; step < 8; step++) {
            // Alternately one session and both: two batch sizes, each replayed.
            const stepping = step % 2 === 0 ? sessions : sessions.slice(0, 1);
            const rows = await Promise.all(stepping.map((s, i) => s.decode(ids[(3 + step + i) % ids.length]!)));
            for (const r of rows) out.push(r.slice());
          }
          for (const s of sessions) s.dispose();
          return out;
        };
        const graphs = await make({ backend: 'cuda' });
        const launched = await withEnv({ MICROGPT_CUDA_GRAPHS: '0' }, () => make({ backend: 'cuda' }));
        const a = await trace(graphs);
        const b = await trace(launched);
        assert.deepEqual(a, b);
        const on = statsOf(graphs);
        const off = statsOf(launched);
        assert.ok((on.graphs ?? 0) >= 1 && (on.graphLaunches ?? 0) > 0, `graphs on: ${JSON.stringify(on)}`);
        assert.equal(off.graphLaunches, 0);
        assert.equal(off.graphs, 0);
        graphs.dispose();
        launched.dispose();
      });

      test('stats: device bytes (the KV caches counted), and with MICROGPT_PROFILE=1 device time by step and host time', async () => {
        const model = await withEnv({ MICROGPT_PROFILE: '1' }, () => make({ backend: 'cuda' }));
        const runtime = runtimeOf(model);
        const empty = statsOf(model);
        assert.ok((empty.deviceBytes ?? 0) > 0, JSON.stringify(empty));
        assert.equal(empty.widestLease, 0, 'no compute-budget lease');
        const session = runtime.createSession();
        await session.prefill(Int32Array.from(ids.slice(0, 5)));
        for (let i = 0; i < 3; i++) await session.decode(ids[5 + i]!);
        const s = statsOf(model);
        assert.ok((s.deviceBytes ?? 0) > (empty.deviceBytes ?? 0), 'a session holds a cache on the device');
        assert.equal(s.cachesAllocated, 1);
        assert.equal(s.passes, 4);
        assert.ok(s.phaseSeconds !== undefined && Object.keys(s.phaseSeconds).length === 8, JSON.stringify(s));
        assert.ok(Object.values(s.phaseSeconds).every((v) => v >= 0) && Object.values(s.phaseSeconds).some((v) => v > 0));
        assert.ok((s.hostSeconds ?? 0) > 0);
        assert.equal(s.graphLaunches, 0, 'no graphs while profiling');
        session.dispose();
        assert.equal(model.precision, 'f32');
        model.dispose();
        // The CPU engine's stats have none of the device's fields.
        const native = await make({ backend: 'native' });
        assert.equal(statsOf(native).deviceBytes, undefined);
        assert.equal(runtimeOf(native).device, null);
        native.dispose();
      });
    });

    describe('a vocabulary of 1,100 tokens: top-k candidates come back instead of the logits', () => {
      const V = 1100;
      const config: ModelConfig = { vocabSize: V, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 32, bias: true };
      const weights = randomTestWeights(config, 21);
      const vocab = Array.from({ length: V }, (_, i) => String.fromCharCode(0x4e00 + i));
      let cuda: Model;
      let native: Model;
      before(async () => {
        cuda = await createModel(config, weights, vocab, { backend: 'cuda' });
        native = await createModel(config, weights, vocab, { backend: 'native' });
      });
      after(() => {
        cuda.dispose();
        native.dispose();
      });

      test("a decode step's candidates are those of its logits, exactly: graphs and launched kernels, a piece's worth and more", async () => {
        const launched = await withEnv({ MICROGPT_CUDA_GRAPHS: '0' }, () => createModel(config, weights, vocab, { backend: 'cuda' }));
        for (const model of [cuda, launched]) {
          const runtime = runtimeOf(model);
          for (const topK of [1, 40, 300]) {
            // One session asks for candidates, its twin for logits, in passes of their own.
            const picking = runtime.createSession();
            const plain = runtime.createSession();
            const select = { topK, limit: V - 3 };
            let top = await picking.prefill(Int32Array.of(5, 900), select);
            let logits = await plain.prefill(Int32Array.of(5, 900));
            for (let step = 0; step < 6; step++) {
              assert.ok(!(top instanceof Float32Array), 'candidates came back');
              const row = logits.subarray(0, V - 3);
              const kth = [...row].sort((a, b) => b - a)[topK - 1]!;
              const ids = Array.from(row.keys()).filter((i) => row[i]! >= kth);
              assert.deepEqual(Array.from(top.ids), ids, `topK ${topK}, step ${step}`);
              assert.deepEqual(Array.from(top.values), ids.map((i) => row[i]!), `topK ${topK}, step ${step}`);
              const next = (ids[0]! * 7 + step) % V;
              top = await picking.decode(next, select);
              logits = await plain.decode(next);
            }
            picking.dispose();
            plain.dispose();
          }
        }
        assert.ok((statsOf(cuda).graphs ?? 0) >= 2, 'graphs for logits and for candidates');
        assert.equal(statsOf(launched).graphLaunches, 0);
        launched.dispose();
      });

      test("seeded samples give the CPU engine's texts (top-k, top-p, greedy), batched too, from candidates alone", async () => {
        const prompt = vocab[3]! + vocab[1000]!;
        const settings: GenerateOptions[] = [
          { seed: 1, temperature: 0.9, topK: 50 },
          { seed: 2, temperature: 1.3, topK: 300 }, // more candidates than a row's piece holds
          { seed: 3, temperature: 0.8, topK: 40, topP: 0.9 },
          { temperature: 0 },
        ];
        for (const s of settings) {
          const opts = { ...s, maxNewTokens: 24 }; // past blockSize: prefills of the sliding window select too
          const before = statsOf(cuda).selectedRows ?? 0;
          const text = await cuda.generate(prompt, opts);
          assert.equal(text, await native.generate(prompt, opts), JSON.stringify(s));
          assert.equal((statsOf(cuda).selectedRows ?? 0) - before, 24, `every token drawn from candidates: ${JSON.stringify(s)}`);
        }
        const many = { seed: 9, temperature: 1, topK: 30, maxNewTokens: 10, numSamples: 4 };
        const before = statsOf(cuda);
        assert.deepEqual(await cuda.generateMany(prompt, many), await native.generateMany(prompt, many));
        const after = statsOf(cuda);
        assert.ok(after.largestBatch > 1, `largest batch ${after.largestBatch}`);
        assert.equal((after.selectedRows ?? 0) - (before.selectedRows ?? 0), 40);
      });

      test('the logits come back where every token stays possible, or an observer reads them', async () => {
        const prompt = vocab[7]!;
        const before = statsOf(cuda).selectedRows;
        const opts = { seed: 4, temperature: 1, topK: null, maxNewTokens: 5 };
        assert.equal(await cuda.generate(prompt, opts), await native.generate(prompt, opts));
        const seen: (Float32Array | null)[] = [];
        const read = async (withLogits: boolean) => {
          const stream = cuda.streamObserved(prompt, { ...opts, topK: 20 }, 0, (step) => seen.push(step.logits), withLogits);
          while ((await stream.next()).done !== true);
        };
        await read(true);
        assert.equal(statsOf(cuda).selectedRows, before);
        assert.ok(seen.length === 5 && seen.every((l) => l !== null && l.length === V));
        seen.length = 0;
        await read(false);
        assert.equal((statsOf(cuda).selectedRows ?? 0) - (before ?? 0), 5);
        assert.ok(seen.length === 5 && seen.every((l) => l === null));
      });
    });

    describe('lifetimes and refusals', () => {
      const e = expected('tiny-bias');

      test('dispose while passes are in flight: they settle, later calls are ERR_DISPOSED', async () => {
        const model = await loadModel(fixture(e.checkpoint), { backend: 'cuda' });
        const runtime = runtimeOf(model);
        const session = runtime.createSession();
        const other = runtime.createSession();
        await other.prefill(Int32Array.of(1, 2));
        const pending = [runtime.forward(Int32Array.of(1, 2, 3)), session.prefill(Int32Array.of(4, 5)), other.decode(3)];
        session.dispose();
        model.dispose();
        const [all, last, step] = await Promise.all(pending);
        assert.equal(all?.length, 3 * 65);
        assert.equal(last?.length, 65);
        assert.equal(step?.length, 65);
        const disposed = isMicroGPTError('ERR_DISPOSED', /disposed/);
        await assert.rejects(runtime.forward(Int32Array.of(1)), disposed);
        await assert.rejects(other.decode(1), disposed);
        assert.throws(() => runtime.createSession(), disposed);
        await assert.rejects(model.generate('a'), disposed);
      });

      test('a device that does not exist is refused naming the devices; device with a CPU backend is an error', async () => {
        const count = cudaStatus()!.devices.length;
        const unavailable = isMicroGPTError('ERR_BACKEND_UNAVAILABLE', new RegExp(`^backend 'cuda' is not available: there is no CUDA device 5: this machine has ${count} devices? \\(0: `));
        await assert.rejects(loadModel(fixture(e.checkpoint), { backend: 'cuda', device: 5 }), unavailable);
        await assert.rejects(loadModel(fixture(e.checkpoint), { device: 5 }), unavailable);
        await assert.rejects(loadModel(fixture(e.checkpoint), { backend: 'native', device: 0 }), isMicroGPTError('ERR_INVALID_ARGUMENT', /backend 'native' has none/));
        await assert.rejects(loadModel(fixture(e.checkpoint), { backend: 'cuda', device: -1 }), isMicroGPTError('ERR_INVALID_ARGUMENT', /device must be/));
        const addon = loadAddon().addon!;
        assert.throws(() => new addon.Model(e.config, { threads: 1, device: 5 }), /there is no CUDA device 5/);
        const model = await loadModel(fixture(e.checkpoint), { backend: 'cuda', device: 0 });
        assert.equal(runtimeOf(model).device, 0);
        model.dispose();
      });

      test('the CLI takes --device', () => {
        const cli = fileURLToPath(new URL('../lib/cli.js', import.meta.url));
        const run = (...args: string[]) =>
          spawnSync(process.execPath, [cli, 'generate', '--model', fixture(e.checkpoint), '--backend', 'cuda', ...args], {
            encoding: 'utf8',
            env: { ...process.env, ...o.env },
            timeout: 60_000,
          });
        const r = run('--device', '0', '--temperature', '0', '--max-new-tokens', '10', '--json', '--prompt', e.greedy.prompt);
        assert.equal(r.status, 0, r.stderr);
        const out = JSON.parse(r.stdout) as { text: string; backend: string };
        assert.equal(out.backend, 'cuda');
        assert.equal(out.text, e.greedy.continuation.slice(0, 10));
        const bad = run('--device', '7');
        assert.equal(bad.status, 1);
        assert.match(bad.stderr, /^microgpt: backend 'cuda' is not available: there is no CUDA device 7/);
        assert.equal(bad.stderr.trim().split('\n').length, 1);
      });

      test('a model the device memory cannot hold is refused: ERR_BACKEND_UNAVAILABLE, out of memory', { skip: !o.emulated && 'needs the emulator\'s memory cap' }, () => {
        const script = `
          const m = await import(${JSON.stringify(DIST)});
          try { await m.loadModel(${JSON.stringify(fixture(e.checkpoint))}, { backend: 'cuda' }); console.log('loaded'); }
          catch (error) { console.log(JSON.stringify({ code: error.code, message: error.message })); }`;
        const r = runChild(script, { ...o.env, MICROGPT_CUDA_EMULATED_MEMORY: '4096' });
        assert.equal(r.status, 0, r.stderr);
        const out = JSON.parse(r.stdout) as { code: string; message: string };
        assert.equal(out.code, 'ERR_BACKEND_UNAVAILABLE');
        assert.match(out.message, /^CUDA device 0 \(microgpt CUDA emulator \(CPU\)\) is out of memory for this model/);
        assert.ok(!out.message.includes('\n'));
      });

      test("with backend 'auto', a model the device cannot hold runs on the CPU engine, with a warning saying why", { skip: !o.emulated && 'needs the emulator\'s memory cap' }, () => {
        const script = `
          const m = await import(${JSON.stringify(DIST)});
          const warnings = [];
          process.on('warning', (w) => warnings.push({ code: w.code, message: w.message }));
          const model = await m.loadModel(${JSON.stringify(fixture(e.checkpoint))});
          const text = await model.generate('a', { maxNewTokens: 5, temperature: 0 });
          await new Promise((resolve) => setImmediate(resolve));
          console.log(JSON.stringify({ backend: model.backend, length: text.length, warnings }));`;
        const r = runChild(script, { ...o.env, MICROGPT_CUDA_EMULATED_MEMORY: '4096' });
        assert.equal(r.status, 0, r.stderr);
        const out = JSON.parse(r.stdout) as { backend: string; length: number; warnings: { code: string; message: string }[] };
        assert.equal(out.backend, 'native');
        assert.equal(out.length, 5);
        assert.equal(out.warnings.length, 1, JSON.stringify(out.warnings));
        assert.equal(out.warnings[0]!.code, 'MICROGPT_CUDA_FALLBACK');
        assert.match(out.warnings[0]!.message, /out of memory for this model.*; backend 'auto' runs this model on the native engine instead$/);
      });

      test('a KV cache the device memory cannot hold fails that request alone; a cache given back serves the next', { skip: !o.emulated && 'needs the emulator\'s memory cap' }, async () => {
        // The model's bytes and one cache's, measured here (no cap), then a cap of one and a half caches.
        const model = await loadModel(fixture(e.checkpoint), { backend: 'cuda' });
        const runtime = runtimeOf(model);
        const weights = statsOf(model).deviceBytes ?? 0;
        const probe = runtime.createSession();
        await probe.prefill(Int32Array.of(1));
        const cache = (statsOf(model).deviceBytes ?? 0) - weights;
        model.dispose();
        assert.ok(weights > 0 && cache > 0, `${weights}, ${cache}`);
        const script = `
          const m = await import(${JSON.stringify(DIST)});
          const model = await m.loadModel(${JSON.stringify(fixture(e.checkpoint))}, { backend: 'cuda' });
          const runtime = model.runtimeForDiagnostics;
          const [a, b] = [runtime.createSession(), runtime.createSession()];
          const r = await Promise.allSettled([a.prefill(Int32Array.of(1, 2)), b.prefill(Int32Array.of(3, 4))]);
          const first = r.map((x) => (x.status === 'fulfilled' ? 'ok' : x.reason.message));
          a.dispose();
          const again = await b.prefill(Int32Array.of(3, 4)).then(() => 'ok', (error) => error.message);
          console.log(JSON.stringify({ first, again, length: b.length, caches: runtime.batchStats.cachesAllocated }));`;
        const r = runChild(script, { ...o.env, MICROGPT_CUDA_EMULATED_MEMORY: String(weights + Math.floor(1.5 * cache)) });
        assert.equal(r.status, 0, r.stderr);
        const out = JSON.parse(r.stdout) as { first: string[]; again: string; length: number; caches: number };
        assert.equal(out.first[0], 'ok');
        assert.match(out.first[1] as string, /^no KV cache on CUDA device 0 \(microgpt CUDA emulator \(CPU\)\): .*out of memory/);
        assert.equal(out.again, 'ok');
        assert.equal(out.length, 2);
        assert.equal(out.caches, 1, 'the second session took the first one\'s cache from the pool');
      });

      test('KV caches given back beyond what the pool keeps are freed before the next cache is made', { skip: !o.emulated && 'needs the emulator\'s memory cap' }, () => {
        // Caches of 64 MiB (block 4096, 1024 wide, 2 layers): the model's pool keeps one. Two
        // sessions end, so the second cache goes back to the module, which frees it on a thread of
        // the engine's, not at once; a cap of the weights and 2.5 caches then holds the next two
        // sessions only if it was freed before the second of them made its cache.
        const script = `
          const m = await import(${JSON.stringify(DIST)});
          const h = await import(${JSON.stringify(new URL('./helpers.js', import.meta.url).href)});
          const config = { vocabSize: 16, blockSize: 4096, nLayer: 2, nHead: 8, nEmbd: 1024, bias: false };
          const vocab = Array.from({ length: 16 }, (_, i) => String.fromCharCode(97 + i));
          const model = await m.createModel(config, h.randomTestWeights(config, 3), vocab, { backend: 'cuda', precision: 'f32' });
          const runtime = model.runtimeForDiagnostics;
          const weights = runtime.batchStats.deviceBytes;
          const cache = 2 * 2 * 4096 * 1024 * 4;
          const step = async (sessions) => Promise.all(sessions.map((s) => s.prefill(Int32Array.of(1, 2))));
          if (process.env.MEASURE === '1') {
            console.log(JSON.stringify({ weights, cache }));
            process.exit(0);
          }
          const first = [runtime.createSession(), runtime.createSession()];
          await step(first);
          for (const s of first) s.dispose();
          const second = [runtime.createSession(), runtime.createSession()];
          const r = await Promise.allSettled(second.map((s) => s.prefill(Int32Array.of(1, 2))));
          const result = r.map((x) => (x.status === 'fulfilled' ? 'ok' : x.reason.message)).join(', ');
          console.log(JSON.stringify({ weights, cache, result, caches: runtime.batchStats.cachesAllocated }));`;
        // The model's device bytes (weights and scratch), measured first without a cap.
        const measured = runChild(script, { ...o.env, MEASURE: '1' });
        assert.equal(measured.status, 0, measured.stderr);
        const sizes = JSON.parse(measured.stdout) as { weights: number; cache: number };
        const cap = Math.floor(sizes.weights + 2.5 * sizes.cache);
        const r = runChild(script, { ...o.env, MICROGPT_CUDA_EMULATED_MEMORY: String(cap) });
        assert.equal(r.status, 0, r.stderr);
        const out = JSON.parse(r.stdout) as { weights: number; cache: number; result: string; caches: number };
        assert.ok(out.weights + 2.5 * out.cache <= cap && out.weights + 3 * out.cache > cap, `cap ${cap} for weights ${out.weights} and caches of ${out.cache}`);
        assert.equal(out.result, 'ok, ok');
        assert.equal(out.caches, 3, 'the pool served one of the second pair');
      });

      test("without a device, backend 'cuda' refuses and 'auto' picks the CPU engine", { skip: !o.emulated && 'needs the emulator\'s device count' }, () => {
        const script = `
          const m = await import(${JSON.stringify(DIST)});
          let error = null;
          try { await m.loadModel(${JSON.stringify(fixture(e.checkpoint))}, { backend: 'cuda' }); } catch (e) { error = e.code + ': ' + e.message; }
          const auto = await m.loadModel(${JSON.stringify(fixture(e.checkpoint))});
          console.log(JSON.stringify({ error, auto: auto.backend, cuda: m.availableBackends().find((b) => b.name === 'cuda') }));`;
        const r = runChild(script, { ...o.env, MICROGPT_CUDA_EMULATED_DEVICES: '0' });
        assert.equal(r.status, 0, r.stderr);
        const out = JSON.parse(r.stdout) as { error: string; auto: string; cuda: { available: boolean; reason: string } };
        assert.equal(out.cuda.available, false);
        assert.match(out.error, /^ERR_BACKEND_UNAVAILABLE: backend 'cuda' is not available: /);
        assert.ok(out.error.includes(out.cuda.reason), out.error);
        assert.equal(out.auto, 'native');
      });
    });

    describe('single kernels against the scalar reference', () => {
      let testing: AddonTesting;
      before(() => {
        testing = loadAddon().addon!.testing;
      });
      const close = (got: Float32Array, want: Float32Array, what: string) => {
        const d = relativeDiff(got, want);
        assert.ok(d <= KERNEL_TOLERANCE, `${what}: ${d}`);
      };

      test('matmul: both kernels, float32 and float16 weights, every epilogue, with and without bias', () => {
        // T = 1 (decode), a few rows, the few-rows kernel's widest, a block; sizes off the vector width.
        const shapes = [
          [1, 37, 33],
          [3, 48, 144],
          [16, 37, 65],
          [24, 64, 33],
          [33, 100, 47],
          [70, 37, 130], // several tiles both ways, the last of each partial
        ] as const;
        let seed = 1;
        for (const [T, K, N] of shapes) {
          const x = randomArray(T * K, seed++);
          const W = randomArray(N * K, seed++, 0.2);
          const bias = randomArray(N, seed++, 0.1);
          const init = randomArray(T * N, seed++);
          for (const f16 of [false, true]) {
            for (const b of [bias, null]) {
              for (const epilogue of [0, 1, 2] as const) {
                const want = init.slice();
                testing.matmul('scalar', want, x, W, b, T, K, N, epilogue, f16);
                for (const variant of [0, 1, 2] as const) {
                  if (variant === 1 && T > 16) continue; // the few-rows kernel takes up to 16 rows
                  const got = init.slice();
                  testing.cudaMatmul(0, got, x, W, b, T, K, N, epilogue, variant, f16);
                  close(got, want, `T ${T} K ${K} N ${N} ${f16 ? 'f16' : 'f32'} ${b ? 'bias' : 'no bias'} epilogue ${epilogue} variant ${variant}`);
                }
              }
            }
          }
        }
      });

      test('LayerNorm fused into the few-rows matmul (decode steps): the scalar LayerNorm, then the scalar matmul', () => {
        let seed = 30;
        for (const [T, K, N] of [[1, 48, 33], [3, 37, 65], [8, 64, 130], [5, 100, 7]] as const) {
          const x = randomArray(T * K, seed++, 2).map((v, i) => v + (i % 3)); // rows of nonzero mean
          const lnW = randomArray(K, seed++, 0.3).map((v) => v + 1);
          const lnB = randomArray(K, seed++, 0.1);
          const W = randomArray(N * K, seed++, 0.2);
          const bias = randomArray(N, seed++, 0.1);
          const init = randomArray(T * N, seed++);
          for (const f16 of [false, true]) {
            for (const [lb, b] of [[lnB, bias], [null, null]] as const) {
              const normed = new Float32Array(T * K);
              testing.layernorm('scalar', normed, x, lnW, lb, T, K);
              for (const epilogue of [0, 1, 2] as const) {
                const want = init.slice();
                testing.matmul('scalar', want, normed, W, b, T, K, N, epilogue, f16);
                const got = init.slice();
                testing.cudaNormMatmul(0, got, x, lnW, lb, W, b, T, K, N, epilogue, f16);
                close(got, want, `T ${T} K ${K} N ${N} ${f16 ? 'f16' : 'f32'} ${b ? 'biases' : 'no biases'} epilogue ${epilogue}`);
              }
            }
          }
        }
      });

      test('layernorm: one row, a block of rows, widths off the vector width, with and without bias', () => {
        let seed = 50;
        for (const [T, C] of [[1, 48], [5, 37], [20, 36], [3, 256]] as const) {
          const x = randomArray(T * C, seed++, 2).map((v, i) => v + (i % 3)); // rows of nonzero mean
          const w = randomArray(C, seed++, 0.3).map((v) => v + 1);
          const b = randomArray(C, seed++, 0.1);
          for (const bias of [b, null]) {
            const want = new Float32Array(T * C);
            const got = new Float32Array(T * C);
            testing.layernorm('scalar', want, x, w, bias, T, C);
            testing.cudaLayernorm(0, got, x, w, bias, T, C);
            close(got, want, `T ${T} C ${C} ${bias ? 'bias' : 'no bias'}`);
          }
        }
      });

      test('embedding: token and position rows from any start, float32 and float16 token rows', () => {
        const V = 67;
        for (const [start, T, C] of [[0, 1, 48], [5, 1, 37], [0, 20, 36], [7, 9, 48]] as const) {
          const wte = randomArray(V * C, 70 + start, 1);
          const wpe = randomArray((start + T) * C, 80 + T, 0.5);
          const ids = Int32Array.from({ length: T }, (_, t) => (t * 13 + start) % V);
          for (const f16 of [false, true]) {
            const table = wte.slice();
            if (f16) testing.f16Round(table);
            const want = new Float32Array(T * C);
            for (let t = 0; t < T; t++) {
              for (let c = 0; c < C; c++) want[t * C + c] = Math.fround(table[ids[t]! * C + c]! + wpe[(start + t) * C + c]!);
            }
            const got = new Float32Array(T * C);
            testing.cudaEmbedding(0, got, ids, wte, wpe, start, T, V, C, f16);
            assert.deepEqual(got, want, `start ${start} T ${T} C ${C} ${f16 ? 'f16' : 'f32'}`);
          }
        }
      });

      test('attention: a decode step and prefills over an empty or filled cache, heads of odd width', () => {
        const blockSize = 24;
        // [start, T, C, heads]: T = 1 at 0 and deep into the cache, T = blockSize, a prefill after a cache.
        for (const [start, T, C, heads] of [[0, 1, 48, 3], [17, 1, 36, 3], [0, 24, 48, 3], [9, 15, 36, 4], [3, 5, 32, 2]] as const) {
          const hs = C / heads;
          const qkv = randomArray(T * 3 * C, 90 + start + T, 1);
          const keys = randomArray(start * C, 91 + T, 1);
          const values = randomArray(start * C, 92 + C, 1);
          const n = start + T;
          const want = new Float32Array(T * C);
          // Every position's key and value, head by head, in the reference kernel's layout.
          const key = (j: number, c: number) => (j < start ? keys[j * C + c]! : qkv[(j - start) * 3 * C + C + c]!);
          const value = (j: number, c: number) => (j < start ? values[j * C + c]! : qkv[(j - start) * 3 * C + 2 * C + c]!);
          const tiles = Math.ceil(n / 16);
          for (let h = 0; h < heads; h++) {
            const tiled = new Float32Array(tiles * hs * 16);
            const rows = new Float32Array(n * hs);
            for (let j = 0; j < n; j++) {
              for (let d = 0; d < hs; d++) {
                tiled[Math.floor(j / 16) * hs * 16 + d * 16 + (j % 16)] = key(j, h * hs + d);
                rows[j * hs + d] = value(j, h * hs + d);
              }
            }
            for (let t = 0; t < T; t++) {
              const q = qkv.slice(t * 3 * C + h * hs, t * 3 * C + (h + 1) * hs);
              const out = new Float32Array(hs);
              testing.attention('scalar', out, q, tiled, rows, 1, start + t, hs, hs, hs * 16, hs);
              want.set(out, t * C + h * hs);
            }
          }
          const got = new Float32Array(T * C);
          testing.cudaAttention(0, got, qkv, keys, values, start, T, C, heads, blockSize);
          close(got, want, `start ${start} T ${T} C ${C} heads ${heads}`);
        }
      });

      test("top-k selection: the sampler's candidates (ties, -0 and +0, infinities, NaN rows, more than a row's piece holds)", () => {
        // Each row's k-th largest by a sorted copy, and every id at or above it, ascending.
        const want = (row: Float32Array, k: number, limit: number): number[] | null => {
          const head = Array.from(row.subarray(0, limit));
          if (head.some(Number.isNaN)) return null;
          const kth = [...head].sort((a, b) => b - a)[k - 1]!;
          return head.flatMap((v, i) => (v >= kth ? [i] : []));
        };
        let seed = 3;
        const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
        // [V, [k, limit, how the row is filled]...]: a V of one warp's width and off it, GPT-2's.
        type Fill = (i: number) => number;
        const spread: Fill = () => (random() - 0.5) * 20;
        const cases: [number, [number, number, Fill][]][] = [
          [33, [[1, 33, spread], [32, 33, spread], [5, 20, (i) => (i % 4) - 1.5], [5, 33, (i) => [0, -0, -1][i % 3]!]]], // the 5th largest is 0: the -0s tie with it
          [1000, [
            [200, 1000, spread],
            [1, 999, () => Math.floor(random() * 3)], // the argmax of many ties
            [7, 900, () => 2.5], // every one tied: 900 candidates, beyond a row's piece (256)
            [300, 1000, (i) => 1 + (i % 400) * 2 ** -23], // neighbouring floats: all four bytes of the key decide
            [10, 1000, (i) => (i === 500 ? NaN : i)],
            [4, 1000, (i) => [Infinity, -Infinity, 0, 3][i % 4]!],
            [999, 1000, (i) => -i], // all but the last
          ]],
          [50304, [[200, 50257, spread], [1, 50257, spread]]],
        ];
        for (const [V, rows] of cases) {
          const logits = new Float32Array(rows.length * V);
          rows.forEach(([, , fill], r) => {
            for (let i = 0; i < V; i++) logits[r * V + i] = fill(i);
          });
          // Beyond each limit, values larger than any before it: they must not count.
          rows.forEach(([, limit], r) => logits.fill(1e30, r * V + limit, (r + 1) * V));
          const values = new Float32Array(rows.length * V).fill(-7);
          const ids = new Int32Array(rows.length * V).fill(-7);
          const k = Int32Array.from(rows, ([k]) => k);
          const limits = Int32Array.from(rows, ([, limit]) => limit);
          const counts = testing.cudaSelect(0, logits, rows.length, V, k, limits, values, ids);
          rows.forEach(([kr, limit], r) => {
            const row = logits.subarray(r * V, (r + 1) * V);
            const expect = want(row, kr, limit);
            const what = `V ${V} row ${r}: k ${kr} of ${limit}`;
            if (expect === null) {
              assert.equal(counts[r], -1, what);
              return;
            }
            assert.equal(counts[r], expect.length, what);
            assert.deepEqual(Array.from(ids.subarray(r * V, r * V + expect.length)), expect, what);
            assert.deepEqual(Array.from(values.subarray(r * V, r * V + expect.length)), expect.map((i) => row[i]!), what);
          });
        }
        assert.throws(() => testing.cudaSelect(0, new Float32Array(8), 1, 8, Int32Array.of(8), Int32Array.of(8), new Float32Array(8), new Int32Array(8)), /0 < k < limit <= V/);
      });

      test("bad arguments come back as the module's reason, an unusable device as ERR_BACKEND_UNAVAILABLE", () => {
        const a = new Float32Array(17 * 4);
        // The few-rows kernel takes at most 16 rows: the module refuses, the addon says so.
        assert.throws(() => testing.cudaMatmul(0, a, a, a, null, 17, 2, 2, 0, 1), /^Error: the CUDA matmul kernel failed: ./);
        assert.throws(() => testing.cudaAttention(0, a, a, a, a, 3, 2, 4, 1, 4), /start \+ T must be at most blockSize/);
        assert.throws(
          () => testing.cudaMatmul(9, a, a, a, null, 1, 2, 2, 0, 0),
          (e: unknown) => (e as { code?: string }).code === 'ERR_BACKEND_UNAVAILABLE' && /there is no CUDA device 9/.test(String(e)),
        );
      });
    });
  });
}
