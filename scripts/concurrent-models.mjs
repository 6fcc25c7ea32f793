#!/usr/bin/env node
// Several models in one process, generating at once: do they share the cores well? For each model
// (the bundled one, and char-10M with random weights), alternating rounds of
//   alone:    one model generates N tokens (batch 1, sampled, seeded);
//   together: M copies of it, loaded separately, each generate N tokens at the same time;
// and reports tokens/s alone, aggregate tokens/s together (all tokens over the wall time), their
// ratio (medians of the rounds), and the compute budget's peak (threads leased at once).
// Built first: npm run build && npm run build:native.
//
//   node scripts/concurrent-models.mjs [--models 2] [--tokens 200] [--rounds 7] [--threads N] [--json]
import { availableParallelism, cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { createModel, loadModel } from '../dist/lib/index.js';
import { BENCH_SHAPES, randomWeights, syntheticVocab } from '../dist/lib/bench/shapes.js';
import { loadAddon } from '../dist/lib/backends/native/binding.js';

const { values } = parseArgs({
  options: {
    models: { type: 'string', default: '2' },
    tokens: { type: 'string', default: '200' },
    rounds: { type: 'string', default: '7' },
    threads: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const copies = Number(values.models);
const tokens = Number(values.tokens);
const rounds = Number(values.rounds);
const threads = values.threads === undefined ? availableParallelism() : Number(values.threads);
const options = { backend: 'native', threads };

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Tokens per second of `models` generating `tokens` each, all at once. */
async function measure(models, prompt) {
  const started = performance.now();
  await Promise.all(
    models.map((m, i) => m.generate(prompt, { maxNewTokens: tokens, temperature: 0.8, topK: 200, seed: 1 + i })),
  );
  return (models.length * tokens) / ((performance.now() - started) / 1000);
}

const subjects = {
  default: { prompt: '\n', load: () => loadModel('default', options) },
  'char-10M': {
    prompt: 'A',
    load: () => {
      const config = BENCH_SHAPES['char-10M'];
      return createModel(config, randomWeights(config, 1), syntheticVocab(config.vocabSize), options);
    },
  },
};

const results = [];
for (const [name, { prompt, load }] of Object.entries(subjects)) {
  const models = [];
  for (let i = 0; i < copies; i++) models.push(await load());
  await measure(models.slice(0, 1), prompt);
  await measure(models, prompt); // warm: caches made, pools calibrated
  const alone = [], together = [];
  for (let r = 0; r < rounds; r++) {
    alone.push(await measure(models.slice(0, 1), prompt));
    together.push(await measure(models, prompt));
  }
  const row = {
    model: name,
    models: copies,
    tokens,
    alone: median(alone),
    together: median(together),
    ratio: median(together.map((t, i) => t / alone[i])),
  };
  results.push(row);
  for (const m of models) m.dispose();
}
const budget = loadAddon().addon?.computeBudget?.() ?? { peak: NaN, capacity: NaN }; // absent from builds before the budget
const report = {
  machine: `${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} logical cores`,
  node: process.version,
  date: new Date().toISOString().slice(0, 10),
  threads,
  rounds,
  budgetPeak: budget.peak,
  results,
};
if (values.json) {
  console.log(JSON.stringify(report, null, 2));
} else {
  console.log(`${report.machine}, ${threads} threads a model, ${report.node}, ${report.date}; medians of ${rounds} rounds`);
  for (const r of results) {
    console.log(
      `${r.model.padEnd(9)} alone ${r.alone.toFixed(0).padStart(6)} tok/s   ${r.models} at once ${r.together.toFixed(0).padStart(6)} tok/s in all   ratio ${r.ratio.toFixed(2)}`,
    );
  }
  console.log(`compute budget: at most ${budget.peak} threads leased at once (capacity ${budget.capacity})`);
}
