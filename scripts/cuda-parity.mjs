#!/usr/bin/env node
// The CUDA engine against the native engine at real shapes, on random weights of nanoGPT's scale
// (lib/bench/shapes.ts): the test suite's fixtures are tiny, and this runs the paths only real
// sizes take (the attention's shared memory beyond 48 KB, the tiled matmul's many tiles, an
// lm_head of 50,304 rows, graphs of 1 and 8 sequences). Per shape, float32:
//   - a full-block forward: every position's logits;
//   - a session: a prefill of half the block, then decode steps, logits after each;
//   - 8 sessions decoding together (one batched pass a step), logits after each.
// The largest |cuda - native| / (1 + |native|) must stay within 1e-4. Exit status 1 otherwise.
//
//   node scripts/cuda-parity.mjs [--shape char-10M]... [--layers N] [--device N] [--steps 16]
// (--shape tiny: a 2-layer, 64-wide model, quick enough for the emulated module; --layers keeps a
// shape's widths with fewer layers, e.g. gpt2-124M's 1,024 positions and 50,304 tokens on the
// emulator.)
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    shape: { type: 'string', multiple: true },
    device: { type: 'string', default: '0' },
    steps: { type: 'string', default: '16' },
    layers: { type: 'string' },
  },
});
const { createModel } = await import('../dist/lib/index.js');
const { BENCH_SHAPES, randomWeights, syntheticVocab } = await import('../dist/lib/bench/shapes.js');
const SHAPES = { ...BENCH_SHAPES, tiny: { vocabSize: 70, blockSize: 64, nLayer: 2, nHead: 4, nEmbd: 64, bias: true } };
const shapes = values.shape ?? ['char-10M', 'gpt2-124M'];
const device = Number(values.device);
const steps = Number(values.steps);
const TOLERANCE = 1e-4;

function worst(a, b) {
  let w = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]) / (1 + Math.abs(b[i]));
    if (!(d <= w)) w = d; // NaN counts as the worst
  }
  return w;
}

let failed = false;
for (const name of shapes) {
  if (SHAPES[name] === undefined) throw new Error(`unknown shape ${name}`);
  const config = values.layers === undefined ? SHAPES[name] : { ...SHAPES[name], nLayer: Number(values.layers) };
  const weights = randomWeights(config);
  const vocab = syntheticVocab(config.vocabSize);
  const native = await createModel(config, weights, vocab, { backend: 'native', precision: 'f32' });
  const cuda = await createModel(config, weights, vocab, { backend: 'cuda', device, precision: 'f32' });
  let seed = 3;
  const ids = (n) => Int32Array.from({ length: n }, () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % config.vocabSize);
  const results = [];
  const check = (what, a, b) => {
    const w = worst(a, b);
    results.push([what, w]);
    if (!(w <= TOLERANCE)) failed = true;
  };

  const block = ids(config.blockSize);
  check(`forward, T = ${config.blockSize}`, await cuda.logits(block), await native.logits(block));

  // One session, then eight: prefill half the block, then decode steps.
  for (const batch of [1, 8]) {
    const prompts = Array.from({ length: batch }, () => ids(Math.floor(config.blockSize / 2)));
    const n = native.runtime, c = cuda.runtime;
    const ns = prompts.map(() => n.createSession());
    const cs = prompts.map(() => c.createSession());
    let w = 0;
    const prefilled = await Promise.all(prompts.map(async (p, i) => [(await cs[i].prefill(p)).slice(), (await ns[i].prefill(p)).slice()]));
    for (const [a, b] of prefilled) w = Math.max(w, worst(a, b));
    check(`prefill of ${prompts[0].length}, ${batch} session${batch > 1 ? 's' : ''}`, [w], [0]);
    w = 0;
    for (let s = 0; s < steps; s++) {
      const next = ids(batch);
      const got = await Promise.all(cs.map(async (x, i) => (await x.decode(next[i])).slice()));
      const want = await Promise.all(ns.map(async (x, i) => (await x.decode(next[i])).slice()));
      for (let i = 0; i < batch; i++) w = Math.max(w, worst(got[i], want[i]));
    }
    check(`${steps} decode steps, ${batch} session${batch > 1 ? 's' : ''} together`, [w], [0]);
    for (const x of [...ns, ...cs]) x.dispose();
  }
  const stats = cuda.runtime.batchStats;
  console.log(`${name}: ${results.map(([what, w]) => `${what}: ${w.toExponential(2)}`).join('; ')}; graphs ${stats.graphs}, graph launches ${stats.graphLaunches}, largest batch ${stats.largestBatch}`);
  native.dispose();
  cuda.dispose();
}
console.log(failed ? `FAILED: beyond ${TOLERANCE}` : `all within ${TOLERANCE}`);
process.exit(failed ? 1 : 0);
