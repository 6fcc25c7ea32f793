// The documented PRNG against its Python re-implementation, and the sampler's semantics.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import type { TopLogits } from '../lib/backends/types.js';
import { topKRequest } from '../lib/generate.js';
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

/**
 * An engine's top-k candidates (TopKRequest), by their definition: the ids whose logit is at or
 * above the k-th largest, ascending, with their logits.
 */
function candidates(logits: Float32Array, k: number): TopLogits {
  const kth = [...logits].sort((a, b) => b - a)[k - 1]!;
  const ids = Int32Array.from(Array.from(logits.keys()).filter((i) => logits[i]! >= kth));
  return { ids, values: Float32Array.from(ids, (i) => logits[i]!) };
}

test("drawing from an engine's top-k candidates gives the draw and probabilities of the whole logits", () => {
  let seed = 11;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const whole: Record<number, Sampler> = {};
  const fromTop: Record<number, Sampler> = {};
  for (let trial = 0; trial < 240; trial++) {
    const V = [3, 65, 1000, 4096][trial % 4]!;
    // Integers (ties across the k-th), spread values, -0 beside +0 and infinities.
    const kind = Math.floor(trial / 4) % 3;
    const logits = Float32Array.from({ length: V }, (_, i) => {
      if (kind === 0) return Math.floor(random() * 5);
      if (kind === 1) return (random() - 0.5) * 30;
      return [-0, 0, Infinity, -Infinity, 1][i % 5]!;
    });
    const temperature = [0, 1, 0.7, 2.5, 100][trial % 5]!;
    const topK = [1, 2, 200, 999][Math.floor(trial / 12) % 4]!;
    const topP = trial % 3 === 0 ? 0.8 : undefined;
    const k = Math.min(topK, V - 1);
    const settings = { temperature, topK: k, topP };
    const u = random();
    const a = (whole[V] ??= new Sampler(V));
    const b = (fromTop[V] ??= new Sampler(V));
    // Candidates of this k, and of a larger one (they hold every logit this k keeps).
    const top = candidates(logits, k);
    const wider = candidates(logits, Math.min(V - 1, k + 3));
    const what = `trial ${trial}: V ${V}, kind ${kind}, T ${temperature}, topK ${k}, topP ${topP}, ${top.ids.length} candidates`;
    const want = a.sample(logits, settings, u);
    assert.equal(b.sample(wider, settings, u), want, `${what} (wider)`);
    assert.equal(b.sample(top, settings, u), want, what);
    for (const id of [0, V - 1, want, Math.floor(random() * V), top.ids[0]!]) {
      assert.equal(b.drawnProbability(id), a.drawnProbability(id), `${what}: the probability of ${id}`);
    }
  }
});

test('top-k candidates too few for the sampler are refused, not drawn from', () => {
  const s = new Sampler(10);
  const top = candidates(Float32Array.from({ length: 10 }, (_, i) => i), 3);
  assert.throws(() => s.sample(top, { temperature: 1, topK: 5 }, 0.5), /3 top-k candidates cannot give a draw keeping the top 5/);
  assert.throws(() => s.sample(top, { temperature: 1 }, 0.5), /cannot give a draw keeping every token/);
  assert.equal(s.sample(top, { temperature: 0 }, 0.5), 9);
});

test('a sampler made for a larger vocabulary draws from shorter logits as from their own length', () => {
  const s = new Sampler(50);
  const short = Float32Array.from([0.5, 2, -1, 1]);
  for (const u of [0.1, 0.5, 0.9]) {
    // topK 20 >= 4 logits: every token stays possible, as nanoGPT's min(top_k, vocab_size).
    assert.equal(s.sample(short, { temperature: 1, topK: 20 }, u), referenceSample(short, 1, undefined, u).id);
    assert.equal(s.sample(short, { temperature: 1, topK: 2 }, u), referenceSample(short, 1, 2, u).id);
  }
});

test('generation asks engines for top-k candidates only for large vocabularies, with top-k or greedy, at sane temperatures', () => {
  assert.equal(topKRequest({ temperature: 0.8, topK: 200 }, 65), undefined); // a character vocabulary
  assert.deepEqual(topKRequest({ temperature: 0.8, topK: 200 }, 50257), { topK: 200, limit: 50257 });
  assert.deepEqual(topKRequest({ temperature: 0 }, 50257), { topK: 1, limit: 50257 });
  assert.equal(topKRequest({ temperature: 1 }, 50257), undefined); // every token possible
  assert.equal(topKRequest({ temperature: 1, topK: 50257 }, 50257), undefined);
  assert.equal(topKRequest({ temperature: 1e-300, topK: 5 }, 50257), undefined); // quotients may overflow
});
