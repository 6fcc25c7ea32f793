// The native engine off the main thread: timers keep firing during a long generation on a
// char-10M-sized model, many generations and models leave memory flat, and concurrent
// generations on one model do not disturb each other.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { nativeBackend } from '../lib/backends/native/index.js';
import type { ModelConfig } from '../lib/config.js';
import { createModel, loadModel, type Model } from '../lib/index.js';
import { expected, fixture, randomTestWeights } from './helpers.js';

const VOCAB = Array.from({ length: 65 }, (_, i) => String.fromCharCode(48 + i));

describe('the event loop stays free', () => {
  test('a 10ms timer never waits more than ~50 ms during a long generation (6 layers x 384, block 256)', async (t) => {
    const config: ModelConfig = { vocabSize: 65, blockSize: 256, nLayer: 6, nHead: 6, nEmbd: 384, bias: true };
    const model = await createModel(config, randomTestWeights(config, 7), VOCAB, { backend: 'native' });
    assert.equal(model.backend, 'native');
    let last = performance.now();
    let worst = 0;
    let ticks = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      worst = Math.max(worst, now - last);
      last = now;
      ticks++;
    }, 10);
    // A long prompt, then past blockSize: every step after the window fills is a full prefill.
    const started = performance.now();
    const text = await model.generate('0'.repeat(200), { maxNewTokens: 120, temperature: 1, seed: 1 });
    const elapsed = performance.now() - started;
    clearInterval(timer);
    model.dispose();
    assert.equal(text.length, 120);
    t.diagnostic(`${ticks} ticks in ${elapsed.toFixed(0)} ms, longest wait ${worst.toFixed(1)} ms`);
    assert.ok(ticks >= Math.floor(elapsed / 10) / 3, `only ${ticks} ticks in ${elapsed.toFixed(0)} ms`);
    assert.ok(worst < 50, `the timer waited ${worst.toFixed(1)} ms`);
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
