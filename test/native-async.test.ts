// The native engine off the main thread: timers keep firing during a long generation on a
// char-10M-sized model, many generations and models leave memory flat, and concurrent
// generations on one model do not disturb each other.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { nativeBackend } from '../lib/backends/native/index.js';
import type { ModelConfig } from '../lib/config.js';
import { createModel, loadModel, type Model } from '../lib/index.js';
import { expected, fixture, randomTestWeights, runChild } from './helpers.js';

const VOCAB = Array.from({ length: 65 }, (_, i) => String.fromCharCode(48 + i));

describe('the event loop stays free', () => {
  test('the main thread stays mostly idle and a 10 ms timer keeps ticking during a long generation (6 layers x 384, block 256)', async (t) => {
    const config: ModelConfig = { vocabSize: 65, blockSize: 256, nLayer: 6, nHead: 6, nEmbd: 384, bias: true };
    const model = await createModel(config, randomTestWeights(config, 7), VOCAB, { backend: 'native' });
    assert.equal(model.backend, 'native');
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    // A long prompt, then past blockSize: every step after the window fills is a full prefill.
    const started = performance.now();
    const before = performance.eventLoopUtilization();
    const text = await model.generate('0'.repeat(200), { maxNewTokens: 120, temperature: 1, seed: 1 });
    const busy = performance.eventLoopUtilization(before);
    const elapsed = performance.now() - started;
    clearInterval(timer);
    model.dispose();
    assert.equal(text.length, 120);
    t.diagnostic(`${ticks} ticks in ${elapsed.toFixed(0)} ms, event loop busy ${(100 * busy.utilization).toFixed(1)} % of the time`);
    // Passes on the main thread would keep its event loop busy nearly all the time (the js engine: > 95 %).
    assert.ok(busy.utilization < 0.5, `the event loop was busy ${(100 * busy.utilization).toFixed(1)} % of the generation`);
    assert.ok(ticks >= Math.floor(elapsed / 10) / 3, `only ${ticks} ticks in ${elapsed.toFixed(0)} ms`);
  });
});

const LIB = JSON.stringify(new URL('../lib/', import.meta.url).href);

describe("libuv's thread pool stays free", () => {
  test('fs calls answer in milliseconds while 100 ms passes run, even with a one-thread libuv pool', (t) => {
    // With passes on libuv's pool, each stat waited behind a whole pass (measured: 103 ms).
    const r = runChild(
      `
      const { createModel } = await import(${LIB} + 'index.js');
      const { randomWeights, syntheticVocab } = await import(${LIB} + 'bench/shapes.js');
      const { stat } = await import('node:fs/promises');
      const config = { vocabSize: 65, blockSize: 512, nLayer: 6, nHead: 8, nEmbd: 512, bias: true };
      const vocab = syntheticVocab(65);
      const model = await createModel(config, randomWeights(config), vocab, { backend: 'native' });
      // Past blockSize from the first token: every step is a full-block prefill.
      const prompt = Array.from({ length: 511 }, (_, i) => vocab[i % 65]).join('');
      // What a stat costs here with nothing running, to tell the passes apart from it.
      const idle = [];
      for (let i = 0; i < 20; i++) { const t = performance.now(); await stat('.'); idle.push(performance.now() - t); }
      idle.sort((a, b) => a - b);
      let running = true;
      const started = performance.now();
      const generation = model.generate(prompt, { maxNewTokens: 6, temperature: 1, seed: 1 }).then(() => { running = false; });
      const waits = [];
      while (running) {
        await new Promise((resolve) => setTimeout(resolve, 5));
        const t = performance.now();
        await stat('.');
        waits.push(performance.now() - t);
      }
      await generation;
      const msPerPass = (performance.now() - started) / 6;
      model.dispose();
      waits.sort((a, b) => a - b);
      console.log(JSON.stringify({ calls: waits.length, p90: waits[Math.floor(waits.length * 0.9)], msPerPass, idleMedian: idle[10] }));`,
      { UV_THREADPOOL_SIZE: '1' },
    );
    assert.equal(r.status, 0, r.stderr);
    const { calls, p90, msPerPass, idleMedian } = JSON.parse(r.stdout) as { calls: number; p90: number; msPerPass: number; idleMedian: number };
    t.diagnostic(`${calls} stat calls, 90th percentile ${p90.toFixed(2)} ms (idle ${idleMedian.toFixed(3)} ms), passes of ${msPerPass.toFixed(0)} ms`);
    // Both measured in the same run: the test can tell only where a pass is far longer than a stat.
    assert.ok(msPerPass > 20 * idleMedian, `passes of ${msPerPass.toFixed(1)} ms are too short next to a ${idleMedian.toFixed(2)} ms stat`);
    assert.ok(calls >= 5);
    // Behind a pass, a stat would wait for a good part of it; beside it, about what it costs idle.
    assert.ok(p90 < msPerPass / 4, `stat took ${p90.toFixed(1)} ms (90th percentile) while passes of ${msPerPass.toFixed(0)} ms ran`);
  });
});

describe('threads and exit', () => {
  test('a loaded model left undisposed does not keep the process alive', () => {
    const r = runChild(`
      const { loadModel } = await import(${LIB} + 'index.js');
      const model = await loadModel(${JSON.stringify(fixture(expected('tiny-bias').checkpoint))}, { backend: 'native' });
      console.log(await model.generate('The ', { temperature: 0, maxNewTokens: 5 }));`);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().length, 5);
  });

  test("models dropped without dispose() give back their threads when collected", (t) => {
    const r = runChild(
      `
      const { createModel } = await import(${LIB} + 'index.js');
      const { randomWeights } = await import(${LIB} + 'bench/shapes.js');
      const { readFileSync } = await import('node:fs');
      const { existsSync } = await import('node:fs');
      // Counted where /proc tells (Linux); elsewhere this checks only that collection goes well.
      const threads = () => existsSync('/proc/self/status') ? Number(/Threads:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) : null;
      const config = { vocabSize: 8, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 32, bias: true };
      const weights = randomWeights(config);
      const collect = async () => {
        for (let i = 0; i < 5; i++) {
          globalThis.gc();
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      };
      const use = async () => {
        const model = await createModel(config, weights, [...'abcdefgh'], { backend: 'native', threads: 2 });
        await model.generate('a', { maxNewTokens: 3 });
      };
      await use();
      await collect();
      const before = threads();
      for (let i = 0; i < 40; i++) await use();
      await collect();
      console.log(JSON.stringify({ before, after: threads() }));`,
      {},
      ['--expose-gc'],
    );
    assert.equal(r.status, 0, r.stderr);
    const { before, after } = JSON.parse(r.stdout) as { before: number | null; after: number | null };
    if (before === null || after === null) {
      t.diagnostic('no /proc/self/status here to count threads: checked only that 40 collected models end well');
      return;
    }
    t.diagnostic(`threads: ${before} before 40 undisposed models, ${after} after they were collected`);
    // Each model has an engine thread and a pool worker: 40 leaked models would be 80 threads.
    assert.ok(after - before < 10, `${after - before} more threads`);
  });

  test('terminating a worker thread in the middle of a generation leaves the main thread unharmed', async () => {
    const { Worker } = await import('node:worker_threads');
    const code = `
      const { parentPort } = require('node:worker_threads');
      (async () => {
        const { createModel } = await import(${LIB} + 'index.js');
        const { randomWeights, syntheticVocab } = await import(${LIB} + 'bench/shapes.js');
        const config = { vocabSize: 65, blockSize: 256, nLayer: 6, nHead: 6, nEmbd: 384, bias: true };
        const vocab = syntheticVocab(65);
        const model = await createModel(config, randomWeights(config), vocab, { backend: 'native' });
        // Past blockSize: each step is a full-block pass, so one is running when we are stopped.
        const prompt = Array.from({ length: 255 }, (_, i) => vocab[i % 65]).join('');
        let tokens = 0;
        for await (const _ of model.stream(prompt, { maxNewTokens: 10000 })) {
          if (++tokens === 3) parentPort.postMessage('running');
        }
      })().catch((e) => parentPort.postMessage('error: ' + e.message));`;
    const worker = new Worker(code, { eval: true });
    const message = await new Promise<string>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    assert.equal(message, 'running');
    await worker.terminate();
    const e = expected('tiny-bias');
    const model = await loadModel(fixture(e.checkpoint), { backend: 'native' });
    assert.equal(await model.generate(e.greedy.prompt, { temperature: 0, maxNewTokens: 40 }), e.greedy.continuation.slice(0, 40));
    model.dispose();
  });
});

describe('memory', () => {
  test('1,000 short generations and 60 models with sessions leave resident memory flat', async (t) => {
    const e = expected('tiny-bias');
    const model = await loadModel(fixture(e.checkpoint), { backend: 'native' });
    const run = async (n: number) => {
      for (let i = 0; i < n; i++) await model.generate('The ', { maxNewTokens: 8, seed: i });
    };
    const config: ModelConfig = { vocabSize: 65, blockSize: 64, nLayer: 2, nHead: 4, nEmbd: 128, bias: true };
    const weights = randomTestWeights(config, 3);
    const churn = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const runtime = await nativeBackend.load(config, weights, { threads: 2 });
        const sessions = [runtime.createSession(), runtime.createSession()];
        await Promise.all(sessions.map((s) => s.prefill(Int32Array.of(1, 2, 3))));
        if (i % 2 === 0) sessions.forEach((s) => s.dispose()); // and sometimes leave them to the model's dispose
        runtime.dispose();
      }
    };
    await run(200);
    await churn(10);
    const before = process.memoryUsage().rss;
    await run(1000);
    await churn(50);
    const growth = (process.memoryUsage().rss - before) / 2 ** 20;
    model.dispose();
    t.diagnostic(`resident memory grew by ${growth.toFixed(1)} MB`);
    // One leaked model here would be 2.6 MB of weights plus two 128 KB caches; 50 of them 140 MB.
    assert.ok(growth < 24, `resident memory grew by ${growth.toFixed(1)} MB`);
  });
});

describe('concurrency', () => {
  test('several generations in flight on one model give the same texts as one at a time', async () => {
    const e = expected('tiny-nobias-f16');
    const model: Model = await loadModel(fixture(e.checkpoint), { backend: 'native' });
    const seeds = [1, 2, 3, 4, 5, 6, 7, 8];
    const one: string[] = [];
    for (const seed of seeds) one.push(await model.generate('a', { seed, maxNewTokens: 60, temperature: 1 }));
    const all = await Promise.all(seeds.map((seed) => model.generate('a', { seed, maxNewTokens: 60, temperature: 1 })));
    assert.deepEqual(all, one);
    model.dispose();
  });

  test('the addon loads and runs in a worker thread too', async () => {
    const { Worker } = await import('node:worker_threads');
    const url = new URL('../lib/index.js', import.meta.url).href;
    const path = fixture(expected('tiny-bias').checkpoint);
    const code = `
      const { parentPort } = require('node:worker_threads');
      import(${JSON.stringify(url)}).then(async ({ loadModel }) => {
        const m = await loadModel(${JSON.stringify(path)}, { backend: 'native' });
        parentPort.postMessage(await m.generate('The ', { temperature: 0, maxNewTokens: 20 }));
        m.dispose();
      }).catch((e) => parentPort.postMessage('error: ' + e.message));`;
    const worker = new Worker(code, { eval: true });
    const text = await new Promise<string>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    const main = await loadModel(path, { backend: 'native' });
    assert.equal(text, await main.generate('The ', { temperature: 0, maxNewTokens: 20 }));
    main.dispose();
  });
});
