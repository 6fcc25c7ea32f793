// The native engine's lifecycle: environment teardown in the middle of work, thread creation
// that fails, weight arrays detached while they load, a session's busy flag, the native memory
// V8 is told about, and the config limits C++ and TypeScript share.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { loadAddon, type Addon, type AddonModel, type AddonTensor } from '../lib/backends/native/binding.js';
import { addonTensors } from '../lib/backends/native/index.js';
import { MAX_THREADS } from '../lib/backends/types.js';
import type { ModelConfig } from '../lib/config.js';
import { randomTestWeights } from './helpers.js';

const LIB = new URL('../lib/', import.meta.url).href;
const BINDING = new URL('../lib/backends/native/binding.js', import.meta.url).href;

interface ChildResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs an ES module in a fresh node, so that an abort or a hang fails the test instead of the
 * runner. `timeout` kills a hang (SIGTERM: status null, signal set).
 */
function child(code: string, options: { timeout?: number; shell?: string } = {}): ChildResult {
  const timeout = options.timeout ?? 60_000;
  const r =
    options.shell === undefined
      ? spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout })
      : spawnSync('/bin/sh', ['-c', `${options.shell} "$0" --input-type=module -e "$1"`, process.execPath, code], {
          encoding: 'utf8',
          timeout,
        });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** The outcome in one line, for assertion messages. */
function outcome(r: ChildResult): string {
  return `status ${r.status}, signal ${r.signal}, stderr: ${r.stderr.trim().split('\n').slice(-8).join(' | ')}`;
}

function addon(): Addon {
  const { addon, reason } = loadAddon();
  assert.ok(addon !== null, `the native addon does not load: ${reason}`);
  return addon;
}

/** Random weights of `config` as the addon's load() takes them (binding.ts: AddonModel.load). */
function tensorsOf(config: ModelConfig, seed: number): AddonTensor[] {
  return addonTensors(config, randomTestWeights(config, seed));
}

const SMALL: ModelConfig = { vocabSize: 11, blockSize: 16, nLayer: 2, nHead: 2, nEmbd: 32, bias: true };

async function loaded(config: ModelConfig, seed = 1, threads = 1): Promise<AddonModel> {
  const model = new (addon().Model)(config, { threads });
  await model.load(tensorsOf(config, seed));
  return model;
}

describe('environment teardown', () => {
  test('terminating a worker right after it starts four generations never aborts the process (20 rounds)', () => {
    // The worker is stopped while its generations are being handed to the addon: a Node-API call
    // failing there used to throw a C++ exception out of the callback (std::terminate, about one
    // run in two).
    const r = child(
      `
      import { Worker } from 'node:worker_threads';
      const code = \`
        import { parentPort } from 'node:worker_threads';
        import { loadModel } from ${JSON.stringify(LIB + 'index.js')};
        const model = await loadModel('default', { backend: 'native', threads: 1 });
        for (let i = 0; i < 4; i++) model.generate('Once', { maxNewTokens: 200, seed: i }).catch(() => {});
        parentPort.postMessage('started');\`;
      let rounds = 0;
      for (let round = 0; round < 20; round++) {
        const worker = new Worker(code, { eval: true, execArgv: ['--input-type=module'] });
        const message = await new Promise((resolve, reject) => { worker.once('message', resolve); worker.once('error', reject); });
        if (message !== 'started') throw new Error(message);
        await worker.terminate();
        rounds++;
      }
      console.log(rounds);`,
      { timeout: 120_000 },
    );
    assert.equal(r.status, 0, outcome(r));
    assert.doesNotMatch(r.stderr, /terminate called|FATAL ERROR/);
    assert.equal(r.stdout.trim(), '20');
  });

  test('a worker that exits inside a binding call (from a getter the call reads) ends cleanly', () => {
    // Deterministic form of the same race: process.exit() in a worker stops its environment while
    // appendMany is between two Node-API calls, so every call after it fails.
    const r = child(`
      import { Worker } from 'node:worker_threads';
      const code = \`
        import { parentPort } from 'node:worker_threads';
        import { loadAddon } from ${JSON.stringify(BINDING)};
        const { addon } = loadAddon();
        const C = 32;
        const model = new addon.Model({ vocabSize: 8, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: C, bias: false }, { threads: 1 });
        const config = { vocabSize: 8, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: C, bias: false };
        await model.load(addon.tensorLayout(config).map((t) => ({ ...t, data: new Float32Array(t.shape.reduce((a, b) => a * b)).fill(0.01) })));
        const sessions = [model.createSession(), model.createSession()];
        const ids = [Int32Array.of(1)];
        Object.defineProperty(ids, 1, { get() { process.exit(0); }, enumerable: true });
        parentPort.postMessage('calling');
        model.appendMany(sessions, ids);
        parentPort.postMessage('returned');\`;
      const worker = new Worker(code, { eval: true, execArgv: ['--input-type=module'] });
      const messages = [];
      worker.on('message', (m) => messages.push(m));
      worker.on('error', (e) => messages.push('error: ' + e.message));
      const exitCode = await new Promise((resolve) => worker.once('exit', resolve));
      console.log(JSON.stringify({ exitCode, messages }));`);
    assert.equal(r.status, 0, outcome(r));
    assert.doesNotMatch(r.stderr, /terminate called|FATAL ERROR/);
    assert.deepEqual(JSON.parse(r.stdout), { exitCode: 0, messages: ['calling'] });
  });
});

describe('threads', () => {
  test('the addon refuses more than maxThreads (256) threads on its own, with a code the TS layer maps', async () => {
    const a = addon();
    assert.equal(a.maxThreads, MAX_THREADS);
    assert.throws(
      () => new a.Model(SMALL, { threads: 1000 }),
      (e: Error & { code?: string }) => e instanceof RangeError && e.code === 'ERR_INVALID_ARGUMENT' && /^threads must be an integer from 1 to 256, got 1000$/.test(e.message),
    );
    const { nativeBackend } = await import('../lib/backends/native/index.js');
    const { MicroGPTError } = await import('../lib/errors.js');
    await assert.rejects(nativeBackend.load(SMALL, randomTestWeights(SMALL, 1), { threads: 1000 }), (e: unknown) => {
      return e instanceof MicroGPTError && e.code === 'ERR_INVALID_ARGUMENT' && /threads/.test(e.message) && !e.message.includes('\n');
    });
    const model = new a.Model(SMALL, { threads: 256 }); // the cap itself is allowed
    model.dispose();
  });

  test('compute threads the OS cannot start fail the load cleanly, and the process carries on', (t) => {
    // The child caps its own address space at what it uses plus 256 MB, then asks for 256 threads
    // of 8 MB stacks (2 MB where the stack limit is unlimited): some start, one fails. That used
    // to unwind with the started threads still joinable while they used the pool's freed memory
    // (a hang, or std::terminate).
    if (process.platform !== 'linux' || spawnSync('prlimit', ['--version']).status !== 0) {
      t.skip('needs Linux and prlimit');
      return;
    }
    const r = child(
      `
      import { execFileSync } from 'node:child_process';
      import { readFileSync } from 'node:fs';
      const { nativeBackend } = await import(${JSON.stringify(LIB + 'backends/native/index.js')});
      const { randomWeights } = await import(${JSON.stringify(LIB + 'bench/shapes.js')});
      const config = { vocabSize: 8, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 32, bias: true };
      const weights = randomWeights(config);
      (await nativeBackend.load(config, weights, { threads: 2 })).dispose(); // every lazy thread of Node is up
      const size = Number(/VmSize:\\s+(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
      execFileSync('prlimit', ['--pid', String(process.pid), '--as=' + (size + 256 * 2 ** 20)]);
      let error = null;
      try {
        (await nativeBackend.load(config, weights, { threads: 256 })).dispose();
      } catch (e) {
        error = { name: e.name, code: e.code, message: e.message };
      }
      const again = await nativeBackend.load(config, weights, { threads: 2 });
      const logits = await again.forward(Int32Array.of(1, 2));
      again.dispose();
      console.log(JSON.stringify({ error, logits: logits.length }));`,
      { timeout: 20_000 },
    );
    assert.equal(r.status, 0, outcome(r));
    const out = JSON.parse(r.stdout) as { error: { name: string; code: string; message: string } | null; logits: number };
    assert.ok(out.error !== null, 'all 256 threads started under the limit: the test proves nothing here');
    assert.equal(out.error.name, 'MicroGPTError');
    assert.equal(out.error.code, 'ERR_INVALID_ARGUMENT');
    assert.match(out.error.message, /^threads 256: could not start compute thread \d+ of 256: .*ask for fewer threads$/);
    assert.ok(!out.error.message.includes('\n'));
    assert.equal(out.logits, 16);
  });
});

describe('weights', () => {
  test("detaching the caller's arrays right after load() is called changes nothing", () => {
    // In a child with --expose-gc: the transferred buffers are freed at once, so a load still
    // reading them would read unmapped memory (a crash) or garbage (wrong logits).
    const r = child(`
      import v8 from 'node:v8';
      import vm from 'node:vm';
      v8.setFlagsFromString('--expose-gc');
      const gc = vm.runInNewContext('gc');
      const { loadAddon } = await import(${JSON.stringify(BINDING)});
      const { randomWeights } = await import(${JSON.stringify(LIB + 'bench/shapes.js')});
      const { addonTensors } = await import(${JSON.stringify(LIB + 'backends/native/index.js')});
      const { addon } = loadAddon();
      const config = { vocabSize: 65, blockSize: 64, nLayer: 6, nHead: 6, nEmbd: 384, bias: true };
      const tensors = addonTensors(config, randomWeights(config));
      const kept = tensors.map((t) => ({ ...t, data: t.data.slice() }));
      const ids = Int32Array.of(1, 2, 3, 4, 5);
      const reference = new addon.Model(config, { threads: 1 });
      await reference.load(kept);
      const want = await reference.forward(ids);
      const model = new addon.Model(config, { threads: 1 });
      const loading = model.load(tensors);
      for (const t of tensors) structuredClone(t.data.buffer, { transfer: [t.data.buffer] });
      gc();
      let detached = tensors.every((t) => t.data.length === 0);
      await loading;
      const got = await model.forward(ids);
      let same = got.length === want.length;
      for (let i = 0; same && i < got.length; i++) same = got[i] === want[i];
      console.log(JSON.stringify({ detached, same }));`);
    assert.equal(r.status, 0, outcome(r));
    assert.deepEqual(JSON.parse(r.stdout), { detached: true, same: true });
  });

  test('an array detached before load() is a clean error', async () => {
    const tensors = tensorsOf(SMALL, 2);
    const wte = (tensors[0] as AddonTensor).data;
    structuredClone(wte.buffer, { transfer: [wte.buffer as ArrayBuffer] });
    const model = new (addon().Model)(SMALL, { threads: 1 });
    assert.throws(() => model.load(tensors), /^RangeError: load: tensor 0 \(transformer\.wte\.weight\) has 0 elements, expected 352$/);
    model.dispose();
  });
});

describe('sessions', () => {
  test('a appendMany that throws while building its group leaves the session free', async () => {
    const model = await loaded(SMALL);
    const session = model.createSession();
    // appendMany stores each promise in a fresh array: a setter on Array.prototype[0] makes that
    // throw after the request for sessions[0] was built, and again when it stores the rejection.
    Object.defineProperty(Array.prototype, '0', {
      set() {
        throw new Error('no element 0 today');
      },
      configurable: true,
    });
    try {
      assert.throws(() => model.appendMany([session], [Int32Array.of(1, 2)]), /no element 0 today/);
    } finally {
      delete (Array.prototype as unknown as Record<string, unknown>)['0'];
    }
    // The session was never queued: not busy, still empty.
    assert.equal(session.length, 0);
    session.reset();
    const logits = await session.append(Int32Array.of(1, 2));
    assert.equal(logits.length, SMALL.vocabSize);
    assert.equal(session.length, 2);
    model.dispose();
  });

  test('a session twice in one appendMany: the second request is refused as busy, the first runs', async () => {
    const model = await loaded(SMALL);
    const session = model.createSession();
    const [first, second] = model.appendMany([session, session], [Int32Array.of(1), Int32Array.of(2)]);
    await assert.rejects(second as Promise<Float32Array>, /still running/);
    await first;
    assert.equal(session.length, 1);
    model.dispose();
  });
});

describe('native memory V8 is told of', () => {
  test('a load reports the weights, sessions their KV caches; dispose and collection give it all back', () => {
    // externalMemory() is V8's total of napi_adjust_external_memory (ArrayBuffers included, so the
    // logits arrays count too: a few hundred bytes each). process.memoryUsage().external does not
    // show these reports.
    const r = child(`
      import v8 from 'node:v8';
      import vm from 'node:vm';
      v8.setFlagsFromString('--expose-gc');
      const gc = vm.runInNewContext('gc');
      const { loadAddon } = await import(${JSON.stringify(BINDING)});
      const { addon } = loadAddon();
      const C = 128;
      const config = { vocabSize: 64, blockSize: 64, nLayer: 2, nHead: 4, nEmbd: C, bias: false };
      const tensors = addon.tensorLayout(config).map((t) => ({ ...t, data: new Float32Array(t.shape.reduce((a, b) => a * b)).fill(0.01) }));
      const weightBytes = 4 * tensors.reduce((a, t) => a + t.data.length, 0);
      const cacheBytes = 2 * 2 * 64 * C * 4; // keys and values, 2 layers, 64 positions
      const settle = async () => { for (let i = 0; i < 3; i++) { gc(); await new Promise((r) => setTimeout(r, 10)); } };
      const use = async (dispose) => {
        const model = new addon.Model(config, { threads: 1 });
        await model.load(tensors);
        const sessions = [model.createSession(), model.createSession()];
        await Promise.all(sessions.map((s) => s.append(Int32Array.of(1, 2, 3))));
        if (dispose) { sessions.forEach((s) => s.dispose()); model.dispose(); }
      };
      await settle();
      const start = addon.externalMemory();
      const model = new addon.Model(config, { threads: 1 });
      await model.load(tensors);
      const loaded = addon.externalMemory() - start;
      const session = model.createSession();
      await session.append(Int32Array.of(1, 2, 3));
      const prefilled = addon.externalMemory() - start - loaded;
      session.dispose();
      model.dispose();
      await settle();
      const disposed = addon.externalMemory() - start;
      for (let i = 0; i < 20; i++) await use(true);
      await settle();
      const afterDisposed = addon.externalMemory() - start;
      for (let i = 0; i < 20; i++) await use(false);
      await settle();
      const afterCollected = addon.externalMemory() - start;
      console.log(JSON.stringify({ weightBytes, cacheBytes, loaded, prefilled, disposed, afterDisposed, afterCollected }));`);
    assert.equal(r.status, 0, outcome(r));
    const m = JSON.parse(r.stdout) as Record<string, number>;
    const weightBytes = m['weightBytes'] as number;
    const cacheBytes = m['cacheBytes'] as number;
    // Packing pads the weights a little; nothing else of this size is made.
    assert.ok((m['loaded'] as number) >= weightBytes && (m['loaded'] as number) < weightBytes * 1.2, JSON.stringify(m));
    assert.ok((m['prefilled'] as number) >= cacheBytes && (m['prefilled'] as number) < cacheBytes + 4096, JSON.stringify(m));
    // One model left over would be weightBytes (~0.8 MB); the slack is for unreleased small arrays.
    for (const key of ['disposed', 'afterDisposed', 'afterCollected']) {
      assert.ok(Math.abs(m[key] as number) < 64 * 1024, `${key}: ${JSON.stringify(m)}`);
    }
  });
});

describe('config limits', () => {
  test("the addon's limits are lib/config.ts's CONFIG_LIMITS", async () => {
    const { CONFIG_LIMITS } = await import('../lib/config.js');
    assert.deepEqual({ ...addon().configLimits }, { ...CONFIG_LIMITS });
  });

  test("the addon's tensor table is lib/weights.ts's tensorLayout: names, shapes and order", async () => {
    const { tensorLayout, parameterCountOf } = await import('../lib/weights.js').then((w) => ({
      tensorLayout: w.tensorLayout,
      parameterCountOf: (c: ModelConfig) => w.tensorLayout(c).reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0),
    }));
    const { parameterCount } = await import('../lib/config.js');
    for (const config of [SMALL, { ...SMALL, bias: false }, { vocabSize: 50257, blockSize: 1024, nLayer: 12, nHead: 12, nEmbd: 768, bias: true }]) {
      const ts = tensorLayout(config).map((t) => ({ name: t.name, shape: t.shape }));
      assert.deepEqual(addon().tensorLayout(config), ts, JSON.stringify(config));
      assert.equal(parameterCountOf(config), parameterCount(config));
    }
    assert.throws(() => addon().tensorLayout({ ...SMALL, nEmbd: 33 }), /multiple of nHead/);
  });

  test('the addon checks every limit on its own, naming the field', () => {
    const a = addon();
    const refused = (config: ModelConfig, pattern: RegExp) =>
      assert.throws(
        () => new a.Model(config, { threads: 1 }),
        (e: Error & { code?: string }) => e instanceof RangeError && e.code === 'ERR_INVALID_CONFIG' && pattern.test(e.message),
        JSON.stringify(config),
      );
    const base: ModelConfig = { vocabSize: 1000, blockSize: 1024, nLayer: 12, nHead: 12, nEmbd: 768, bias: true };
    refused({ ...base, vocabSize: 1_114_113 }, /^invalid config: vocabSize must be an integer from 1 to 1114112, got 1114113$/);
    refused({ ...base, blockSize: 4097 }, /blockSize must be an integer from 1 to 4096, got 4097/);
    refused({ ...base, nLayer: 65 }, /nLayer must be an integer from 1 to 64, got 65/);
    refused({ ...base, nHead: 65 }, /nHead must be an integer from 1 to 64, got 65/);
    refused({ ...base, nEmbd: 8193 }, /nEmbd must be an integer from 1 to 8192, got 8193/);
    refused({ ...base, nHead: 5 }, /nEmbd \(768\) must be a multiple of nHead \(5\)/);
    refused({ ...base, nHead: 1, nEmbd: 1024 }, /head size nEmbd \/ nHead \(1024\) must be at most 512/);
    refused({ ...base, nLayer: 64, blockSize: 4096, nHead: 16, nEmbd: 2048 }, /nLayer x blockSize x nEmbd \(536870912\) must be at most 268435456/);
    refused({ ...base, nLayer: 64, blockSize: 4096, nHead: 64, nEmbd: 64 }, /nLayer x nHead x blockSize\^2 \(68719476736\) must be at most 4294967296/);
    refused({ ...base, vocabSize: 1_114_112, nHead: 16, nEmbd: 2048 }, /^invalid config: \d+ parameters is more than microgpt supports \(2147483648\)$/);
    // At the limits: accepted (nothing is allocated before load()).
    for (const config of [
      { vocabSize: 1_114_112, blockSize: 4096, nLayer: 1, nHead: 64, nEmbd: 1024, bias: true },
      { vocabSize: 65, blockSize: 1024, nLayer: 2, nHead: 16, nEmbd: 8192, bias: true },
      { vocabSize: 65, blockSize: 1024, nLayer: 64, nHead: 64, nEmbd: 1024, bias: false },
      { vocabSize: 65, blockSize: 4096, nLayer: 64, nHead: 4, nEmbd: 1024, bias: false },
    ]) {
      new a.Model(config, { threads: 1 }).dispose();
    }
  });
});
