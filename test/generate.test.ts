// Generation against PyTorch (greedy and seeded sampling), and the loop's contract: streaming,
// stop strings, several samples, abort, option validation.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { loadModel, MicroGPTError, type Model } from '../lib/index.js';
import { MODEL_NAMES, expected, fixture, isMicroGPTError } from './helpers.js';

for (const name of MODEL_NAMES) {
  const e = expected(name);
  describe(`${name} generation matches PyTorch`, () => {
    let model: Model;
    before(async () => {
      model = await loadModel(fixture(e.checkpoint), { backend: 'js' });
    });
    after(() => model.dispose());

    test(`greedy decoding of ${e.greedy.maxNewTokens} tokens (3 x blockSize + 7) is nanoGPT's text`, async () => {
      const text = await model.generate(e.greedy.prompt, { temperature: 0, maxNewTokens: e.greedy.maxNewTokens });
      assert.equal(text, e.greedy.continuation);
    });

    test('topK 1 decodes greedily too', async () => {
      const text = await model.generate(e.greedy.prompt, { topK: 1, maxNewTokens: e.greedy.maxNewTokens, seed: 5 });
      assert.equal(text, e.greedy.continuation);
    });

    for (const s of e.sampled) {
      const opts = { seed: s.seed, temperature: s.temperature, topK: s.topK, ...(s.topP === null ? {} : { topP: s.topP }) };
      test(`seeded sampling ${JSON.stringify(opts)} draws PyTorch's reference tokens`, async () => {
        const text = await model.generate(e.greedy.prompt, { ...opts, maxNewTokens: s.maxNewTokens });
        assert.equal(text, s.continuation);
        const many = await model.generateMany(e.greedy.prompt, { ...opts, maxNewTokens: s.samples.maxNewTokens, numSamples: 3 });
        assert.deepEqual(many, s.samples.continuations);
      });
    }
  });
}

describe('generation loop', () => {
  const e = expected('tiny-bias');
  let model: Model;
  before(async () => {
    model = await loadModel(fixture('models', 'tiny-bias.safetensors'));
  });
  after(() => model.dispose());
  const greedy = { temperature: 0, maxNewTokens: e.greedy.maxNewTokens };

  test('stream yields the same text as generate, piece by piece', async () => {
    const pieces: string[] = [];
    for await (const piece of model.stream(e.greedy.prompt, greedy)) pieces.push(piece);
    assert.ok(pieces.length > 1);
    assert.equal(pieces.join(''), e.greedy.continuation);
  });

  test('stop strings end the text before their first occurrence, also when streamed', async () => {
    const full = e.greedy.continuation;
    // A stop string that the greedy text contains, spanning several tokens.
    const at = Math.floor(full.length / 2);
    const stop = full.slice(at, at + 3);
    const first = full.indexOf(stop);
    const result = await model.complete(e.greedy.prompt, { ...greedy, stop: ['\u0000never', stop] });
    assert.equal(result.text, full.slice(0, first));
    assert.equal(result.finishReason, 'stop');
    assert.equal(result.tokens, first + stop.length);
    let streamed = '';
    for await (const piece of model.stream(e.greedy.prompt, { ...greedy, stop })) {
      streamed += piece;
      assert.ok(!streamed.includes(stop));
    }
    assert.equal(streamed, full.slice(0, first));
  });

  test('complete reports length as the finish reason and counts tokens', async () => {
    const result = await model.complete(e.greedy.prompt, { temperature: 0, maxNewTokens: 7 });
    assert.deepEqual(result, { text: e.greedy.continuation.slice(0, 7), tokens: 7, finishReason: 'length' });
    assert.equal(await model.generate('ab', { maxNewTokens: 0 }), '');
  });

  test('the same seed gives the same text; another seed another text', async () => {
    const a = await model.generate('The ', { seed: 99, maxNewTokens: 40, temperature: 1 });
    const b = await model.generate('The ', { seed: 99, maxNewTokens: 40, temperature: 1 });
    const c = await model.generate('The ', { seed: 100, maxNewTokens: 40, temperature: 1 });
    assert.equal(a, b);
    assert.notEqual(a, c);
  });

  test('an AbortSignal stops a generation with its reason', async () => {
    const controller = new AbortController();
    const pending = model.generate('The ', { maxNewTokens: 100_000, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('user gave up')), 20);
    await assert.rejects(pending, /user gave up/);
    await assert.rejects(model.generate('The ', { signal: AbortSignal.abort() }), { name: 'AbortError' });
  });

  test('unknown prompt characters are named, or dropped on request', async () => {
    await assert.rejects(model.generate('Hi 🙂 there', { maxNewTokens: 1 }), (err: unknown) => {
      assert.ok(err instanceof MicroGPTError);
      assert.equal(err.code, 'ERR_UNKNOWN_TOKEN');
      assert.match(err.message, /'🙂' \(U\+1F642\) at position 3/);
      return true;
    });
    const dropped = await model.generate('The 🙂', { temperature: 0, maxNewTokens: 5, unknownCharacters: 'drop' });
    assert.equal(dropped, await model.generate('The ', { temperature: 0, maxNewTokens: 5 }));
  });

  const bad: [string, unknown, RegExp][] = [
    ['negative temperature', { temperature: -1 }, /temperature must be a number from 0/],
    ['NaN temperature', { temperature: Number.NaN }, /temperature/],
    ['topK 0', { topK: 0 }, /topK must be an integer from 1/],
    ['fractional topK', { topK: 2.5 }, /topK/],
    ['topP 0', { topP: 0 }, /topP must be a number in \(0, 1\]/],
    ['topP above 1', { topP: 1.5 }, /topP/],
    ['maxNewTokens beyond the bound', { maxNewTokens: 1e9 }, /maxNewTokens must be an integer from 0 to 1000000/],
    ['negative maxNewTokens', { maxNewTokens: -1 }, /maxNewTokens/],
    ['a string seed', { seed: '1' }, /seed must be an integer/],
    ['an unsafe seed', { seed: 2 ** 60 }, /seed/],
    ['an empty stop string', { stop: [''] }, /stop string/],
    ['a non-signal', { signal: {} }, /signal must be an AbortSignal/],
    ['numSamples 0', { numSamples: 0 }, /numSamples/],
  ];
  for (const [what, options, message] of bad) {
    test(`rejects ${what}`, async () => {
      await assert.rejects(model.generateMany('The ', options as never), isMicroGPTError('ERR_INVALID_ARGUMENT', message));
    });
  }

  test('rejects an empty, non-string or enormous prompt before encoding it', async () => {
    await assert.rejects(model.generate('', {}), /prompt is empty/);
    await assert.rejects(model.generate(42 as never, {}), /prompt must be a string/);
    // It starts with a character outside the vocabulary: had it been encoded first, the error
    // would name that character instead of the length.
    const huge = '\u0001' + 'a'.repeat(300 * 1024 * 1024 - 1);
    await assert.rejects(model.generate(huge, {}), /prompt is 314572800 characters long; the limit is 1048576/);
  });

  test('logits checks its ids', async () => {
    const bs = model.config.blockSize;
    await assert.rejects(model.logits([]), /1 to blockSize \(16\) token ids, got 0/);
    await assert.rejects(model.logits(new Array<number>(bs + 1).fill(0)), /got 17/);
    await assert.rejects(model.logits([0, 65]), /ids\[1\] = 65 is not a token id/);
    await assert.rejects(model.logits([0, 1.5]), /ids\[1\] = 1.5/);
    await assert.rejects(model.logits('abc' as never), /ids must be an array/);
  });

  test('a disposed model says so', async () => {
    const m = await loadModel(fixture('models', 'tiny-bias.safetensors'));
    m.dispose();
    await assert.rejects(m.generate('The '), /disposed/);
    await assert.rejects(m.logits([1]), /disposed/);
  });
});
