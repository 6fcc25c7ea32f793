// The documented PRNG against its Python re-implementation, and the sampler's semantics.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Rng, Sampler, argmax } from '../lib/index.js';
import { fixture } from './helpers.js';

interface Draws {
  seed: number;
  stream: number;
  uint32: number[];
  uniform: number[];
}

test('Rng draws the numbers of the Python reference (xoshiro128** seeded by SplitMix64)', () => {
  const all = JSON.parse(readFileSync(fixture('expected', 'rng.json'), 'utf8')) as Draws[];
  assert.ok(all.length >= 4);
  for (const d of all) {
    const rng = new Rng(d.seed, d.stream);
    assert.deepEqual(Array.from({ length: d.uint32.length }, () => rng.nextUint32()), d.uint32, `seed ${d.seed}/${d.stream}`);
    assert.deepEqual(Array.from({ length: d.uniform.length }, () => rng.uniform()), d.uniform, `seed ${d.seed}/${d.stream}`);
  }
});

test('Rng rejects seeds that are not safe non-negative integers', () => {
  assert.throws(() => new Rng(-1), /seed must be an integer/);
  assert.throws(() => new Rng(1.5), /seed/);
  assert.throws(() => new Rng(2 ** 53), /seed/);
});

test('uniform numbers lie in [0, 1) and look uniform', () => {
  const rng = new Rng(3);
  const bins = new Array<number>(10).fill(0);
  for (let i = 0; i < 100_000; i++) {
    const u = rng.uniform();
    assert.ok(u >= 0 && u < 1);
    bins[Math.floor(u * 10)]!++;
  }
  for (const b of bins) assert.ok(Math.abs(b - 10_000) < 500, `bin count ${b}`);
});

const logits = Float32Array.from([1, 3, 2, 3, -1, 0.5]);

test('temperature 0 is argmax, first index among ties', () => {
  const s = new Sampler(logits.length);
  assert.equal(argmax(logits), 1);
  assert.equal(s.sample(logits, { temperature: 0 }, 0.99), 1);
});

test('the draw is the inverse CDF over token ids in ascending order', () => {
  const s = new Sampler(logits.length);
  const p = Array.from(logits, (x) => Math.exp(x - 3));
  const total = p.reduce((a, b) => a + b);
  let cumulative = 0;
  for (let i = 0; i < p.length; i++) {
    const lo = cumulative / total;
    cumulative += p[i]!;
    const hi = cumulative / total;
    assert.equal(s.sample(logits, { temperature: 1 }, lo + (hi - lo) / 2), i);
  }
  assert.equal(s.sample(logits, { temperature: 1 }, 0), 0);
  assert.equal(s.sample(logits, { temperature: 1 }, 1 - 2 ** -24), 5);
});

test("topK keeps values tied with the k-th (nanoGPT's semantics)", () => {
  const s = new Sampler(logits.length);
  // k = 1: both 3s survive; nothing else can be drawn.
  const seen = new Set<number>();
  for (let u = 0; u < 1; u += 0.01) seen.add(s.sample(logits, { temperature: 1, topK: 1 }, u));
  assert.deepEqual([...seen].sort(), [1, 3]);
  // k = 3: 3, 3, 2 survive.
  seen.clear();
  for (let u = 0; u < 1; u += 0.01) seen.add(s.sample(logits, { temperature: 0.7, topK: 3 }, u));
  assert.deepEqual([...seen].sort(), [1, 2, 3]);
});

test('topP keeps the most likely tokens until their mass reaches p', () => {
  const s = new Sampler(4);
  const l = Float32Array.from([Math.log(0.1), Math.log(0.5), Math.log(0.3), Math.log(0.1)]);
  const seen = new Set<number>();
  for (let u = 0; u < 1; u += 0.005) seen.add(s.sample(l, { temperature: 1, topP: 0.75 }, u));
  assert.deepEqual([...seen].sort(), [1, 2]); // 0.5 < 0.75, 0.5 + 0.3 >= 0.75
  seen.clear();
  for (let u = 0; u < 1; u += 0.005) seen.add(s.sample(l, { temperature: 1, topP: 0.45 }, u));
  assert.deepEqual([...seen], [1]);
  seen.clear();
  for (let u = 0; u < 1; u += 0.005) seen.add(s.sample(l, { temperature: 1, topP: 0.01 }, u));
  assert.deepEqual([...seen], [1]); // at least one token survives
});

test('higher temperature flattens the distribution', () => {
  const s = new Sampler(logits.length);
  const count = (temperature: number) => {
    let rare = 0;
    const rng = new Rng(11);
    for (let i = 0; i < 5000; i++) if (s.sample(logits, { temperature }, rng.uniform()) === 4) rare++;
    return rare;
  };
  assert.ok(count(5) > 3 * count(0.7) + 10);
});

/**
 * The sampler's meaning, written plainly: divide, keep the values at or above the k-th largest
 * (a sorted copy), softmax from the largest kept, walk the CDF in token order.
 */
function referenceSample(logits: Float32Array, temperature: number, topK: number | undefined, u: number): { id: number; probability: (id: number) => number } {
  const v = Array.from(logits, (x) => x / temperature);
  const threshold = topK !== undefined && topK < v.length ? [...v].sort((a, b) => b - a)[topK - 1]! : -Infinity;
  const max = Math.max(...v.filter((x) => x >= threshold));
  const p = v.map((x) => (x >= threshold ? Math.exp(x - max) : 0));
  const total = p.reduce((a, b) => a + b, 0);
  const probability = (id: number) => p[id]! / total;
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) continue;
    cumulative += p[i]!;
    last = i;
    if (cumulative > u * total) return { id: i, probability };
  }
  return { id: last, probability };
}

test('top-k sampling draws what the plain definition draws, on vocabularies up to GPT-2 size, ties and all', () => {
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const samplers: Record<number, Sampler> = {};
  for (let trial = 0; trial < 300; trial++) {
    const V = [2, 65, 1000, 50304][trial % 4]!;
    // Integers (many ties), spread values, an ascending run (every value enters the heap).
    const kind = Math.floor(trial / 4) % 3;
    const logits = Float32Array.from({ length: V }, (_, i) => (kind === 0 ? Math.floor(random() * 5) : kind === 1 ? (random() - 0.5) * 30 : i / V));
    const temperature = [1, 0.7, 2.5][trial % 3]!;
    const topK = [1, 3, 200, undefined][Math.floor(trial / 12) % 4];
    const u = random();
    // One sampler a vocabulary size, reused as a generation reuses it (it keeps scratch between draws).
    const sampler = (samplers[V] ??= new Sampler(V));
    const got = sampler.sample(logits, { temperature, topK }, u);
    const want = referenceSample(logits, temperature, topK, u);
    const what = `trial ${trial}: V ${V}, kind ${kind}, T ${temperature}, topK ${topK}`;
    assert.equal(got, want.id, what);
    for (const id of [0, V - 1, got, Math.floor(random() * V)]) {
      assert.equal(sampler.drawnProbability(id), want.probability(id), `${what}: the probability of ${id}`);
    }
    if (trial % 7 === 0) sampler.sample(logits, { temperature: 0 }, u); // a greedy draw in between changes nothing
  }
});
