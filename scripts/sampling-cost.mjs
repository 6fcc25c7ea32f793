#!/usr/bin/env node
// What drawing a token costs the main thread, from a step's whole logits against from the top-k
// candidates an engine that selects them (the CUDA engine) hands back instead: the same Sampler,
// the same draws (checked), in one process, alternating, the median of several runs. For GPT-2's
// vocabulary the whole logits are the host's largest per-token cost a GPU cannot remove; a batch
// of n sequences pays it n times a step. Built first: npm run build.
//
//   node scripts/sampling-cost.mjs [--vocab 50304] [--top-k 200] [--temperature 0.8] [--draws 2000] [--runs 7] [--json]
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    vocab: { type: 'string', default: '50304' },
    'top-k': { type: 'string', default: '200' },
    temperature: { type: 'string', default: '0.8' },
    draws: { type: 'string', default: '2000' },
    runs: { type: 'string', default: '7' },
    json: { type: 'boolean', default: false },
  },
});
const V = Number(values.vocab);
const topK = Number(values['top-k']);
const temperature = Number(values.temperature);
const draws = Number(values.draws);
const runs = Number(values.runs);

const { Sampler, Rng } = await import('../dist/lib/index.js');

/** Logits shaped like a trained model's (a few large, a long tail), and uniformly random ones. */
const shapes = {
  'sin-like': Float32Array.from({ length: V }, (_, i) => Math.fround(Math.sin(i * 0.37) * 3 + Math.sin(i * 0.011) * 2)),
  random: (() => {
    const rng = new Rng(7);
    return Float32Array.from({ length: V }, () => Math.fround((rng.uniform() - 0.5) * 20));
  })(),
};

/** The candidates by their definition (lib/backends/types.ts, TopKRequest). */
function candidates(logits, k) {
  const kth = Float32Array.from(logits).sort().reverse()[k - 1];
  const ids = [];
  for (let i = 0; i < logits.length; i++) if (logits[i] >= kth) ids.push(i);
  return { ids: Int32Array.from(ids), values: Float32Array.from(ids, (i) => logits[i]) };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const settings = { temperature, topK };
const report = { vocab: V, topK, temperature, draws, runs, shapes: {} };
for (const [name, logits] of Object.entries(shapes)) {
  const top = candidates(logits, topK);
  const whole = new Sampler(V);
  const fromTop = new Sampler(V);
  // One draw sequence for both: the same tokens, or the comparison means nothing.
  const us = Array.from({ length: draws }, (_, i) => new Rng(3, i).uniform());
  for (const u of us.slice(0, 200)) {
    if (whole.sample(logits, settings, u) !== fromTop.sample(top, settings, u)) throw new Error(`${name}: the draws differ`);
  }
  const time = (sampler, input) => {
    const start = process.hrtime.bigint();
    let sink = 0;
    for (const u of us) sink += sampler.sample(input, settings, u);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    if (sink < 0) throw new Error('unreachable');
    return (seconds / draws) * 1e6;
  };
  time(whole, logits); // warm-up: both compiled before timing
  time(fromTop, top);
  const a = [];
  const b = [];
  for (let r = 0; r < runs; r++) {
    a.push(time(whole, logits));
    b.push(time(fromTop, top));
  }
  report.shapes[name] = { candidates: top.ids.length, wholeUs: median(a), candidatesUs: median(b), ratio: median(a) / median(b) };
}

if (values.json) {
  console.log(JSON.stringify(report, null, 2));
} else {
  console.log(`one draw, V ${V}, top-k ${topK}, temperature ${temperature}: median of ${runs} runs of ${draws} draws (us)`);
  for (const [name, r] of Object.entries(report.shapes)) {
    console.log(`  ${name.padEnd(9)} whole logits ${r.wholeUs.toFixed(1).padStart(7)}   ${r.candidates} candidates ${r.candidatesUs.toFixed(2).padStart(6)}   ${r.ratio.toFixed(0)}x`);
  }
}
