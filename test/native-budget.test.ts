// The process's compute budget (native/compute_budget.h): the native models of a process, in every
// thread, share one budget of compute threads: the cores, or the largest `threads` among them where
// more. Models generating at once split it between them, never running more threads together,
// and compute the same bits as alone.
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { describe, test } from 'node:test';
import { loadAddon } from '../lib/backends/native/binding.js';
import { nativeBackend, type NativeRuntime } from '../lib/backends/native/index.js';
import type { InferenceSession } from '../lib/backends/types.js';
import type { ModelConfig } from '../lib/config.js';
import { randomTestWeights } from './helpers.js';

const addon = loadAddon().addon;

// Wide enough that a step of two sessions splits its matmuls across two threads even where the
// pool's barrier is slow.
const CONFIG: ModelConfig = { vocabSize: 67, blockSize: 48, nLayer: 2, nHead: 6, nEmbd: 384, bias: true };
const WEIGHTS = randomTestWeights(CONFIG, 11);

async function loadRuntime(threads: number): Promise<NativeRuntime> {
  return (await nativeBackend.load(CONFIG, WEIGHTS, { threads })) as NativeRuntime;
}

/** Every logits array of two sessions, prefilled then decoding `steps` tokens, stepping together. */
async function trace(runtime: NativeRuntime, seed: number, steps: number): Promise<Float32Array[]> {
  const sessions: InferenceSession[] = [runtime.createSession(), runtime.createSession()];
  const out: Float32Array[] = [];
  const token = (i: number, j: number) => (seed * 31 + i * 7 + j * 13) % CONFIG.vocabSize;
  for (let j = 0; j <= steps; j++) {
    const logits = await Promise.all(
      sessions.map((s, i) => (j === 0 ? s.prefill(Int32Array.of(token(i, 0), token(i, 1))) : s.decode(token(i, j)))),
    );
    for (const l of logits) out.push(l.slice());
  }
  for (const s of sessions) s.dispose();
  return out;
}

const models = () => addon?.computeBudget().models ?? 0;
const cores = availableParallelism();

describe('the compute budget', { skip: addon === null ? 'no native binary: the compute budget is native' : false }, () => {
  test('models generating at once share the budget, and compute what they compute alone', async (t) => {
    // Each may take every core: together they could run three times the budget.
    const threads = Math.max(2, cores);
    const runtimes = await Promise.all([loadRuntime(threads), loadRuntime(threads), loadRuntime(threads)]);
    t.after(() => runtimes.forEach((r) => r.dispose()));
    const alone: Float32Array[][] = [];
    for (let m = 0; m < runtimes.length; m++) alone.push(await trace(runtimes[m] as NativeRuntime, m, 30));
    const budget = addon?.computeBudget();
    assert.equal(budget?.capacity, threads, 'the budget: the cores, or the largest threads of the live models');
    const together = await Promise.all(runtimes.map((r, m) => trace(r, m, 30)));
    together.forEach((rows, m) =>
      rows.forEach((row, j) => assert.deepEqual(row, (alone[m] as Float32Array[])[j], `model ${m}, logits ${j}`)),
    );
    // Three models that each may take all of the budget never held more than it together.
    const peak = addon?.computeBudget().peak ?? Infinity;
    assert.ok(peak <= threads, `peak ${peak} threads leased at once, budget ${threads}`);
    const stats = runtimes.map((r) => r.batchStats);
    assert.ok(
      stats.some((s) => s.sharedPasses > 0),
      `no pass ran on a share of the budget: ${JSON.stringify(stats)}`,
    );
    for (const s of stats) assert.ok(s.widestLease >= 1 && s.widestLease <= threads, `widest lease ${s.widestLease}`);
  });

  test('the budget is the cores, or the largest threads of the models alive where more', async (t) => {
    const before = models();
    const one = await loadRuntime(1);
    assert.equal(addon?.computeBudget().capacity, cores, 'models of fewer threads than cores all run');
    const more = await loadRuntime(cores + 1);
    t.after(() => [one, more].forEach((r) => r.dispose()));
    assert.equal(models(), before + 2);
    assert.equal(addon?.computeBudget().capacity, cores + 1);
    more.dispose();
    assert.equal(models(), before + 1);
    assert.equal(addon?.computeBudget().capacity, cores, 'the model of more threads is gone: the budget shrinks');
    one.dispose();
    assert.equal(models(), before);
  });

  test('models in worker threads draw on the same budget', async (t) => {
    const { Worker } = await import('node:worker_threads');
    const url = JSON.stringify(new URL('../lib/backends/native/index.js', import.meta.url).href);
    const config = JSON.stringify(CONFIG);
    const helpers = JSON.stringify(new URL('./helpers.js', import.meta.url).href);
    const code = `
      const { parentPort } = require('node:worker_threads');
      (async () => {
        const { nativeBackend } = await import(${url});
        const { randomTestWeights } = await import(${helpers});
        const model = await nativeBackend.load(${config}, randomTestWeights(${config}, 11), { threads: ${cores + 3} });
        parentPort.postMessage('loaded');
        parentPort.once('message', () => { model.dispose(); parentPort.postMessage('disposed'); });
      })().catch((e) => parentPort.postMessage('error: ' + e.message));`;
    const worker = new Worker(code, { eval: true });
    t.after(() => worker.terminate()); // also when an assertion fails: the worker would keep the process alive
    const next = () =>
      new Promise<string>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
    const before = models();
    assert.equal(await next(), 'loaded');
    assert.equal(models(), before + 1, "the worker's model counts in the main thread's budget");
    assert.equal(addon?.computeBudget().capacity, cores + 3);
    worker.postMessage('dispose');
    assert.equal(await next(), 'disposed');
    assert.equal(models(), before);
  });
});
