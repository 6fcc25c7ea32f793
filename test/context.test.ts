// The context policies past blockSize. 'shift' is checked against an independent re-computation
// that runs a full forward pass over the current window at every step (no KV cache), so it sees
// what the policy promises: after a shift, the last `keep` tokens at positions 0..keep-1; then one
// token more per step until the window is full again. 'slide' is nanoGPT's (generate.test.ts
// checks it against PyTorch past blockSize).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { resolveBackend } from '../lib/backends/index.js';
import type { NativeRuntime } from '../lib/backends/native/index.js';
import type { BackendName, InferenceSession, ModelRuntime } from '../lib/backends/types.js';
import { generateSample, planGeneration, type GenerateManyOptions, type GenerationResult } from '../lib/generate.js';
import { CharTokenizer, loadModel, MicroGPTError, readModelFile, Rng, Sampler, type Model } from '../lib/index.js';
import { expected, fixture, maxAbsDiff, isMicroGPTError } from './helpers.js';

const available = (name: BackendName) => {
  try {
    resolveBackend(name);
    return true;
  } catch {
    return false;
  }
};
const BACKENDS: BackendName[] = (['js', 'native'] as const).filter(available);

/** What a generation's session was asked (the ids' count at each call) and what it answered. */
interface Trace {
  calls: { kind: 'prefill' | 'decode'; from: number; n: number }[];
  logits: Float32Array[];
}

/** The runtime with every session's calls recorded in `trace`. */
function traced(runtime: ModelRuntime, trace: Trace): ModelRuntime {
  return {
    backend: runtime.backend,
    config: runtime.config,
    computesOnMainThread: runtime.computesOnMainThread,
    precision: runtime.precision,
    forward: (ids) => runtime.forward(ids),
    dispose: () => runtime.dispose(),
    createSession(): InferenceSession {
      const s = runtime.createSession();
      const record = async (kind: 'prefill' | 'decode', n: number, call: () => Promise<Float32Array>) => {
        const from = s.length;
        const logits = await call();
        trace.calls.push({ kind, from, n });
        trace.logits.push(logits.slice());
        return logits;
      };
      return {
        get length() {
          return s.length;
        },
        prefill: (ids) => record('prefill', ids.length, () => s.prefill(ids)),
        decode: (id) => record('decode', 1, () => s.decode(id)),
        reset: () => s.reset(),
        dispose: () => s.dispose(),
      };
    },
  };
}

/**
 * The shift policy re-computed without a cache: at every step the logits are the last row of a
 * fresh forward pass over the whole current window; when the window is full, the new token and
 * the keep - 1 before it become the window. The sampler and generator are the product's (their
 * agreement with PyTorch is tested elsewhere): one uniform number per token unless greedy.
 */
async function shiftReference(
  runtime: ModelRuntime,
  usable: number,
  promptIds: readonly number[],
  o: { maxNewTokens: number; keep: number; temperature: number; topK?: number; topP?: number; seed: number },
  stream = 0,
): Promise<{ tokens: number[]; logits: Float32Array[]; smallestGap: number }> {
  const { blockSize: B, vocabSize: V } = runtime.config;
  let window = promptIds.slice(-B);
  const rng = new Rng(o.seed, stream);
  const sampler = new Sampler(usable);
  const tokens: number[] = [];
  const logits: Float32Array[] = [];
  let smallestGap = Infinity;
  for (let n = 0; n < o.maxNewTokens; n++) {
    const all = await runtime.forward(Int32Array.from(window));
    const last = all.slice((window.length - 1) * V, window.length * V);
    logits.push(last);
    const row = last.subarray(0, usable);
    const sorted = [...row].sort((a, b) => b - a);
    smallestGap = Math.min(smallestGap, (sorted[0] as number) - (sorted[1] as number));
    const u = o.temperature === 0 ? 0 : rng.uniform();
    const token = sampler.sample(row, { temperature: o.temperature, topK: o.topK, topP: o.topP }, u);
    tokens.push(token);
    window = window.length < B ? [...window, token] : [...window, token].slice(-o.keep);
  }
  return { tokens, logits, smallestGap };
}

async function run(runtime: ModelRuntime, tokenizer: CharTokenizer, promptIds: number[], options: GenerateManyOptions, sample = 0): Promise<GenerationResult> {
  const plan = planGeneration(options, tokenizer.size, runtime.config.blockSize);
  const gen = generateSample(runtime, tokenizer, promptIds, plan, sample);
  for (;;) {
    const step = await gen.next();
    if (step.done === true) return step.value;
  }
}

const SETTINGS = [
  { temperature: 0, seed: 0 },
  { temperature: 0.8, topK: 10, seed: 1234 },
  { temperature: 1, topP: 0.9, seed: 7 },
];

for (const backend of BACKENDS) {
  for (const name of ['tiny-bias', 'tiny-nobias-f16'] as const) {
    describe(`${name} on ${backend}: context 'shift'`, () => {
      const e = expected(name);
      const B = e.config.blockSize;
      let runtime: ModelRuntime;
      let tokenizer: CharTokenizer;
      before(async () => {
        const file = await readModelFile(fixture(e.checkpoint));
        runtime = await resolveBackend(backend).load(file.config, file.weights);
        tokenizer = new CharTokenizer(file.vocab);
      });
      after(() => runtime.dispose());

      for (const keep of [undefined, 1, 5, B - 1]) {
        for (const prompt of [e.greedy.prompt, 'ROMEO:']) {
          test(`keep ${keep ?? `default (${Math.floor(B / 2)})`}, prompt of ${prompt.length}: every token and logit is the re-computation's`, async () => {
            const K = keep ?? Math.floor(B / 2);
            const promptIds = tokenizer.encode(prompt);
            const maxNewTokens = 3 * B + 7;
            for (const s of SETTINGS) {
              const ref = await shiftReference(runtime, tokenizer.size, promptIds, { ...s, maxNewTokens, keep: K });
              if (s.temperature === 0) assert.ok(ref.smallestGap > 1e-4, `a near tie (${ref.smallestGap}): pick another case`);
              const trace: Trace = { calls: [], logits: [] };
              const result = await run(traced(runtime, trace), tokenizer, promptIds, { ...s, maxNewTokens, context: 'shift', ...(keep === undefined ? {} : { keep }) });
              assert.equal(result.text, tokenizer.decode(ref.tokens), JSON.stringify(s));
              assert.equal(result.tokens, maxNewTokens);
              // The session's answers are the full passes' last rows, step by step.
              assert.equal(trace.logits.length, maxNewTokens);
              trace.logits.forEach((l, i) => assert.ok(maxAbsDiff(l, ref.logits[i] as Float32Array) < 1e-4, `step ${i}`));
              // The cost: the prompt's prefill, then one keep-token prefill per blockSize - keep + 1 tokens.
              const first = Math.min(promptIds.length, B);
              const expectedCalls: Trace['calls'] = [{ kind: 'prefill', from: 0, n: first }];
              for (let length = first; expectedCalls.length < maxNewTokens; ) {
                if (length < B) expectedCalls.push({ kind: 'decode', from: length++, n: 1 });
                else expectedCalls.push({ kind: 'prefill', from: 0, n: (length = K) });
              }
              assert.deepEqual(trace.calls, expectedCalls);
            }
          });
        }
      }

      test("both policies draw the same numbers: the texts agree until the window is first full", async () => {
        const promptIds = tokenizer.encode('ROMEO:');
        const same = B - promptIds.length + 1; // tokens sampled before the first shift or slide
        for (const s of SETTINGS.slice(1)) {
          const slide = await run(runtime, tokenizer, promptIds, { ...s, maxNewTokens: 2 * B });
          const shift = await run(runtime, tokenizer, promptIds, { ...s, maxNewTokens: 2 * B, context: 'shift' });
          assert.equal(shift.text.slice(0, same), slide.text.slice(0, same));
          assert.notEqual(shift.text, slide.text);
        }
      });
    });
  }
}

describe("context 'shift' through the Model: stream, stop strings, abort, several samples", () => {
  const e = expected('tiny-bias');
  const B = e.config.blockSize;
  let model: Model;
  before(async () => {
    model = await loadModel(fixture(e.checkpoint));
  });
  after(() => model.dispose());
  const options = { temperature: 0.9, seed: 31, maxNewTokens: 5 * B, context: 'shift' as const, keep: 6 };

  test('stream yields the text of complete, piece by piece', async () => {
    const whole = await model.complete(e.greedy.prompt, options);
    let streamed = '';
    for await (const piece of model.stream(e.greedy.prompt, options)) streamed += piece;
    assert.equal(streamed, whole.text);
    assert.equal(whole.text.length, 5 * B);
  });

  test('a stop string past several shifts ends the text before it', async () => {
    const full = await model.generate(e.greedy.prompt, options);
    const stop = full.slice(4 * B, 4 * B + 3);
    const first = full.indexOf(stop);
    const result = await model.complete(e.greedy.prompt, { ...options, stop });
    assert.deepEqual(result, { text: full.slice(0, first), tokens: first + 3, finishReason: 'stop' });
  });

  test('an AbortSignal stops a shifting generation with its reason', async () => {
    const controller = new AbortController();
    const pending = model.generate('The ', { ...options, maxNewTokens: 1_000_000, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('enough')), 30);
    await assert.rejects(pending, /enough/);
  });

  test('generateMany: sample i is the re-computation of stream i', async () => {
    const file = await readModelFile(fixture(e.checkpoint));
    const runtime = await resolveBackend('js').load(file.config, file.weights);
    const tokenizer = new CharTokenizer(file.vocab);
    const many = await model.generateMany(e.greedy.prompt, { ...options, maxNewTokens: 3 * B, numSamples: 4 });
    for (let i = 0; i < 4; i++) {
      const ref = await shiftReference(runtime, tokenizer.size, tokenizer.encode(e.greedy.prompt), { ...options, maxNewTokens: 3 * B }, i);
      assert.equal(many[i], tokenizer.decode(ref.tokens), `sample ${i}`);
    }
    runtime.dispose();
  });
});

describe('native batching with some sessions shifting while others decode', { skip: available('native') ? false : 'no native engine' }, () => {
  test('generations of different prompt lengths and keeps, in flight together, are each what they are alone', async () => {
    const e = expected('tiny-nobias-f16');
    const B = e.config.blockSize;
    const file = await readModelFile(fixture(e.checkpoint));
    const runtime = (await resolveBackend('native').load(file.config, file.weights)) as NativeRuntime;
    const tokenizer = new CharTokenizer(file.vocab);
    const text = 'First Citizen:\nBefore we proceed any further, hear me speak.';
    // Different prompt lengths and keeps make the sessions reach a full window at different steps.
    const jobs: { promptIds: number[]; options: GenerateManyOptions; sample: number }[] = [
      { promptIds: tokenizer.encode(text.slice(0, 1)), options: { seed: 1, temperature: 1, maxNewTokens: 4 * B, context: 'shift' }, sample: 0 },
      { promptIds: tokenizer.encode(text.slice(0, 9)), options: { seed: 2, temperature: 0.7, maxNewTokens: 4 * B, context: 'shift', keep: 3 }, sample: 1 },
      { promptIds: tokenizer.encode(text), options: { seed: 3, temperature: 1, topK: 5, maxNewTokens: 4 * B, context: 'shift', keep: B - 2 }, sample: 2 },
      { promptIds: tokenizer.encode(text.slice(0, 17)), options: { seed: 4, temperature: 1, maxNewTokens: 4 * B }, sample: 3 }, // 'slide'
    ];
    const alone: GenerationResult[] = [];
    for (const j of jobs) alone.push(await run(runtime, tokenizer, j.promptIds, j.options, j.sample));
    const before = runtime.batchStats;
    const together = await Promise.all(jobs.map((j) => run(runtime, tokenizer, j.promptIds, j.options, j.sample)));
    const after = runtime.batchStats;
    assert.deepEqual(together, alone);
    const passes = after.passes - before.passes;
    const requests = after.requests - before.requests;
    assert.ok(passes <= requests / 2, `${passes} passes for ${requests} requests: the sessions were not batched`);
    runtime.dispose();
  });
});

describe('context options are checked', () => {
  let model: Model;
  before(async () => {
    model = await loadModel(fixture('models', 'tiny-bias.safetensors'));
  });
  after(() => model.dispose());
  const bad: [string, unknown, RegExp][] = [
    ['an unknown policy', { context: 'wrap' }, /^context must be 'slide' or 'shift', got "wrap"$/],
    ['a non-string policy', { context: 1 }, /^context must be 'slide' or 'shift', got 1$/],
    ['keep 0', { context: 'shift', keep: 0 }, /^keep must be an integer from 1 to 15, got 0$/],
    ['keep blockSize', { context: 'shift', keep: 16 }, /^keep must be an integer from 1 to 15, got 16$/],
    ['a fractional keep', { context: 'shift', keep: 2.5 }, /^keep must be an integer from 1 to 15, got 2.5$/],
    ['a string keep', { context: 'shift', keep: '4' }, /^keep must be an integer from 1 to 15, got "4"$/],
    ['keep without shift', { keep: 4 }, /^keep is the number of tokens context 'shift' keeps; add context: 'shift' or leave keep out$/],
    ["keep with 'slide'", { context: 'slide', keep: 4 }, /keep is the number of tokens context 'shift' keeps/],
  ];
  for (const [what, options, message] of bad) {
    test(`rejects ${what}`, async () => {
      await assert.rejects(model.generateMany('The ', options as never), isMicroGPTError('ERR_INVALID_ARGUMENT', message));
      assert.throws(() => model.stream('The ', options as never), (err: unknown) => err instanceof MicroGPTError && message.test(err.message));
    });
  }

  test("a model with blockSize 1 cannot shift, and says what to use", () => {
    assert.throws(() => planGeneration({ context: 'shift' }, 65, 1), /^MicroGPTError: context 'shift' needs a blockSize of at least 2 \(this model's is 1\); use context 'slide'$/);
    assert.equal(planGeneration({}, 65, 1).context, 'slide');
    assert.deepEqual([planGeneration({ context: 'shift' }, 65, 256).keep, planGeneration({ context: 'shift', keep: 255 }, 65, 256).keep], [128, 255]);
  });
});
