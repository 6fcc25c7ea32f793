#!/usr/bin/env node
// Where a decode step's time goes (native engine, batch 1, within the window): per token, the
// whole step as `generate` sees it, the forward pass (the engine's busy time), what lies outside
// the pass (the hand-offs between the main thread and the engine thread, and the TypeScript side:
// sampling, the generation loop), and the pass by step (MICROGPT_PROFILE=1: each step reads the
// clock). Against it, the bytes a step reads (weights once, and on average half the window's
// keys and values) over this machine's read bandwidth for that many bytes, measured in the same
// run with the engine's probe: the floor for a step that streams them from cache or memory.
// With --backend cuda, the CUDA engine instead: the step and the pass as decode runs them (from
// CUDA graphs), and a second, profiled model for the split (MICROGPT_PROFILE=1 times each step on
// the device with events, so it launches kernels without graphs): device time by step, and the
// host's part of each pass (the table's upload, waiting, the logits' copy back); no CPU bandwidth
// floor then. Built first: npm run build && npm run build:native.
//
//   node scripts/decode-profile.mjs [--model default|char-10M|gpt2-124M] [--backend native|cuda] [--device N]
//                                   [--threads N] [--tokens 250] [--runs 9] [--json]
import { availableParallelism, cpus } from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'default' },
    backend: { type: 'string', default: 'native' },
    device: { type: 'string', default: '0' },
    threads: { type: 'string' },
    tokens: { type: 'string', default: '250' },
    runs: { type: 'string', default: '9' },
    json: { type: 'boolean', default: false },
  },
});
const { createModel, loadModel, parameterCount } = await import('../dist/lib/index.js');
const { BENCH_SHAPES, randomWeights, syntheticVocab } = await import('../dist/lib/bench/shapes.js');
const { loadAddon } = await import('../dist/lib/backends/native/binding.js');

const threads = values.threads === undefined ? availableParallelism() : Number(values.threads);
const tokens = Number(values.tokens);
const runs = Number(values.runs);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const cuda = values.backend === 'cuda';
if (!cuda && values.backend !== 'native') throw new Error(`--backend is native or cuda, not ${values.backend}`);
const device = Number(values.device);
const weights = values.model === 'default' ? null : BENCH_SHAPES[values.model];
if (values.model !== 'default' && weights === undefined) throw new Error(`unknown model ${values.model}`);
const randomModel = weights === null ? null : { config: weights, weights: randomWeights(weights) };

// MICROGPT_PROFILE is read when a model is made.
async function load(profile) {
  process.env.MICROGPT_PROFILE = profile ? '1' : '0';
  const options = { backend: values.backend, threads, ...(cuda ? { device } : {}) };
  if (randomModel === null) return loadModel('default', options);
  return createModel(randomModel.config, randomModel.weights, syntheticVocab(randomModel.config.vocabSize), { ...options, precision: 'f32' });
}

// Per token: the whole step, the pass (the engine's busy time), and with profiling each step of
// it (and for cuda the host's part); the run whose step is the median, whole (its parts add up).
async function measure(model) {
  const runtime = model.runtime;
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
      Object.keys(after.phaseSeconds ?? {}).map((k) => [k, ((after.phaseSeconds[k] - before.phaseSeconds[k]) / tokens) * 1e6]),
    );
    const host = after.hostSeconds === undefined ? undefined : ((after.hostSeconds - before.hostSeconds) / tokens) * 1e6;
    samples.push({ step, pass: ((after.busySeconds - before.busySeconds) / tokens) * 1e6, phases, host });
  }
  return [...samples].sort((a, b) => a.step - b.step)[Math.floor(runs / 2)];
}

let model = await load(!cuda);
const { config } = model;
let mid = await measure(model);
let profiled = null;
if (cuda) {
  model.dispose();
  model = await load(true);
  profiled = await measure(model);
  mid = { ...mid, phases: profiled.phases };
}

const C = config.nEmbd;
const matrices = config.vocabSize * C + config.nLayer * 12 * C * C;
const weightBytes = matrices * (model.precision === 'f16' ? 2 : 4) + (parameterCount(config) - matrices) * 4;
const kvBytes = config.nLayer * 2 * C * 4 * (tokens / 2); // keys and values of half the generation, on average
const bytes = weightBytes + kvBytes;
const addon = loadAddon().addon;
const isa = addon.cpu().best;
const bandwidth = cuda ? null : median(Array.from({ length: 7 }, () => addon.testing.benchReadBandwidth(isa, Math.ceil(bytes / 2 ** 20), threads, 20)));
const floor = cuda ? null : (bytes / (bandwidth * 1e9)) * 1e6;
const gpu = cuda ? addon.cuda().devices[device]?.name : undefined;
const report = {
  machine: `${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} logical cores${gpu ? `; ${gpu}` : ''}`,
  backend: values.backend,
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
  ...(cuda ? { profiledStepMicroseconds: profiled.step, profiledPassMicroseconds: profiled.pass, hostMicroseconds: profiled.host } : {}),
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
  if (cuda) console.log(`profiled (kernels launched one by one, timed by events): step ${us(profiled.step)}, pass ${us(profiled.pass)}, of which the host's part ${us(profiled.host)}; device time by step:`);
  const whole = cuda ? profiled.pass : mid.pass;
  for (const [k, v] of Object.entries(mid.phases)) console.log(`  ${k.padEnd(14)} ${us(v).padStart(9)}  ${((100 * v) / whole).toFixed(0).padStart(3)} %`);
  if (cuda) console.log(`bytes a step reads: ${(bytes / 1e6).toFixed(1)} MB`);
  else console.log(`bytes a step reads: ${(bytes / 1e6).toFixed(1)} MB; read bandwidth for that size: ${bandwidth.toFixed(1)} GB/s; floor ${us(floor)} (${(1e6 / floor).toFixed(0)} tokens/s)`);
}
