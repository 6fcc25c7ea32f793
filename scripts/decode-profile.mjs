#!/usr/bin/env node
// Where a decode step's time goes (native engine, batch 1, within the window): per token, the
// whole step as `generate` sees it, the forward pass (the engine's busy time), what lies outside
// the pass (the hand-offs between the main thread and the engine thread, and the TypeScript side:
// sampling, the generation loop), and the pass by step (MICROGPT_PROFILE=1: each step reads the
// clock). Against it, the bytes a step reads (weights once, and on average half the window's
// keys and values) over this machine's read bandwidth for that many bytes, measured in the same
// run with the engine's probe: the floor for a step that streams them from cache or memory.
// Built first: npm run build && npm run build:native.
//
//   node scripts/decode-profile.mjs [--model default|char-10M] [--threads N] [--tokens 250] [--runs 9] [--json]
import { availableParallelism, cpus } from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'default' },
    threads: { type: 'string' },
    tokens: { type: 'string', default: '250' },
    runs: { type: 'string', default: '9' },
    json: { type: 'boolean', default: false },
  },
});
process.env.MICROGPT_PROFILE = '1'; // read when a model is made
const { createModel, loadModel, parameterCount } = await import('../dist/lib/index.js');
const { BENCH_SHAPES, randomWeights, syntheticVocab } = await import('../dist/lib/bench/shapes.js');
const { loadAddon } = await import('../dist/lib/backends/native/binding.js');

const threads = values.threads === undefined ? availableParallelism() : Number(values.threads);
const tokens = Number(values.tokens);
const runs = Number(values.runs);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

let model;
if (values.model === 'default') {
  model = await loadModel('default', { backend: 'native', threads });
} else {
  const config = BENCH_SHAPES[values.model];
  if (config === undefined) throw new Error(`unknown model ${values.model}`);
  model = await createModel(config, randomWeights(config), syntheticVocab(config.vocabSize), { backend: 'native', threads, precision: 'f32' });
}
const runtime = model.runtime;
const { config } = model;
const prompt = model.tokenizer.vocab[0];
const generate = (seed) => model.generate(prompt, { maxNewTokens: tokens, temperature: 0.8, topK: 200, seed });
await generate(0);

const samples = [];
for (let r = 0; r < runs; r++) {
  const before = runtime.batchStats;
  const started = performance.now();
  await generate(1 + r);
  const step = ((performance.now() - started) / tokens) * 1000;
  const after = runtime.batchStats;
  const phases = Object.fromEntries(
    Object.keys(after.phaseSeconds).map((k) => [k, ((after.phaseSeconds[k] - before.phaseSeconds[k]) / tokens) * 1e6]),
  );
  samples.push({ step, pass: ((after.busySeconds - before.busySeconds) / tokens) * 1e6, phases });
}
// The run whose step is the median, whole (its parts add up).
const mid = [...samples].sort((a, b) => a.step - b.step)[Math.floor(runs / 2)];

const C = config.nEmbd;
const matrices = config.vocabSize * C + config.nLayer * 12 * C * C;
const weightBytes = matrices * (model.precision === 'f16' ? 2 : 4) + (parameterCount(config) - matrices) * 4;
const kvBytes = config.nLayer * 2 * C * 4 * (tokens / 2); // keys and values of half the generation, on average
const bytes = weightBytes + kvBytes;
const addon = loadAddon().addon;
const isa = addon.cpu().best;
const bandwidth = median(Array.from({ length: 7 }, () => addon.testing.benchReadBandwidth(isa, Math.ceil(bytes / 2 ** 20), threads, 20)));
const floor = (bytes / (bandwidth * 1e9)) * 1e6;
const report = {
  machine: `${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} logical cores`,
  date: new Date().toISOString().slice(0, 10),
  model: values.model,
  precision: model.precision,
  threads,
  tokens,
  runs,
  tokensPerSecond: 1e6 / mid.step,
  stepMicroseconds: mid.step,
  passMicroseconds: mid.pass,
  outsidePassMicroseconds: mid.step - mid.pass,
  phaseMicroseconds: mid.phases,
  bytesPerStep: bytes,
  readGBs: bandwidth,
  bandwidthFloorMicroseconds: floor,
};
model.dispose();
if (values.json) {
  console.log(JSON.stringify(report, null, 2));
} else {
  const us = (x) => `${x.toFixed(1)} us`;
  console.log(`${report.machine}, ${threads} threads, ${report.date}: ${values.model} (${report.precision}), ${tokens} tokens, the median of ${runs} runs`);
  console.log(`step ${us(mid.step)} (${report.tokensPerSecond.toFixed(0)} tokens/s) = pass ${us(mid.pass)} + outside the pass ${us(mid.step - mid.pass)}`);
  for (const [k, v] of Object.entries(mid.phases)) console.log(`  ${k.padEnd(14)} ${us(v).padStart(9)}  ${((100 * v) / mid.pass).toFixed(0).padStart(3)} %`);
  console.log(`bytes a step reads: ${(bytes / 1e6).toFixed(1)} MB; read bandwidth for that size: ${bandwidth.toFixed(1)} GB/s; floor ${us(floor)} (${(1e6 / floor).toFixed(0)} tokens/s)`);
}
