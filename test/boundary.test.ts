// The public boundary: every misuse of the API, on every engine alike, is a one-line
// MicroGPTError that names the argument; configs beyond CONFIG_LIMITS are refused before any
// allocation.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  availableBackends,
  CharTokenizer,
  CONFIG_LIMITS,
  createModel,
  evaluate,
  loadModel,
  MicroGPTError,
  validateConfig,
  type Model,
  type ModelConfig,
  type ModelWeights,
} from '../lib/index.js';
import { assembleWeights } from '../lib/weights.js';
import { fixture, isMicroGPTError, randomTestWeights } from './helpers.js';

const CONFIG: ModelConfig = { vocabSize: 8, blockSize: 8, nLayer: 2, nHead: 2, nEmbd: 8, bias: true };
const VOCAB = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];

function isOneLineError(code: string, pattern: RegExp) {
  const is = isMicroGPTError(code, pattern);
  return (err: unknown): boolean => {
    is(err);
    assert.ok(!(err as Error).message.includes('\n'), `a message of more than one line: ${JSON.stringify((err as Error).message)}`);
    return true;
  };
}

const invalid = (pattern: RegExp) => isOneLineError('ERR_INVALID_ARGUMENT', pattern);

/** Calls that must fail on a model, with what the message names. */
const MISUSE: readonly (readonly [string, (m: Model) => unknown, RegExp])[] = [
  ['logits(null)', (m) => m.logits(null as never), /^ids must be an array of token ids, got null/],
  ['logits({ length: NaN })', (m) => m.logits({ length: NaN } as never), /^ids must be an array .*length is NaN/],
  ['logits({ length: -1 })', (m) => m.logits({ length: -1 } as never), /^ids must be an array .*length is -1/],
  ['logits([0.5])', (m) => m.logits([0.5]), /^ids\[0\] = 0.5 is not a token id/],
  ['logits(a string)', (m) => m.logits('abc' as never), /^ids must be an array of token ids, got string/],
  ['encode(null)', (m) => m.encode(null as never), /^text must be a string, got null/],
  ['encode(text, null)', (m) => m.encode('ab', null as never), /^encode options must be an object, got null/],
  ['encode(text, { unknown: "x" })', (m) => m.encode('ab', { unknown: 'x' as never }), /^unknown must be 'error' or 'drop'/],
  ['decode(null)', (m) => m.decode(null as never), /^ids must be an array of token ids, got null/],
  ['decode({ length: 1e20 })', (m) => m.decode({ length: 1e20 } as never), /^ids must be an array .*length is 100000000000000000000/],
  ['decode([99])', (m) => m.decode([99]), /^token id 99 is outside the vocabulary/],
  ['decode(["a"])', (m) => m.decode(['a'] as never), /^token id string is outside the vocabulary/],
  ['generate(prompt, null)', (m) => m.generate('ab', null as never), /^generation options must be an object, got null/],
  ['generate(prompt, 5)', (m) => m.generate('ab', 5 as never), /^generation options must be an object, got number/],
  ['stream(prompt, [])', (m) => m.stream('ab', [] as never), /^generation options must be an object, got an array/],
  ['generateMany(prompt, null)', (m) => m.generateMany('ab', null as never), /^generation options must be an object/],
  ['generate(null)', (m) => m.generate(null as never), /^prompt must be a string/],
  ['generate(prompt, { topP: "0.5\\n" })', (m) => m.generate('ab', { topP: '0.5\n' as never }), /^topP must be a number in \(0, 1\], got "0.5\\n"$/],
  ['generate(prompt, { seed: a function })', (m) => m.generate('ab', { seed: (() => 1) as never }), /^seed must be an integer from 0 to \d+, got a function$/],
  ['generate(prompt, { maxNewTokens: NaN })', (m) => m.generate('ab', { maxNewTokens: NaN }), /^maxNewTokens must be an integer/],
  ['evaluate(model, null)', (m) => evaluate(m, null as never), /^text must be a string/],
  ['evaluate(model, text, null)', (m) => evaluate(m, 'abc', null as never), /^evaluate options must be an object, got null/],
  ['evaluate(model, text, { signal: 1 })', (m) => evaluate(m, 'abc', { signal: 1 as never }), /^signal must be an AbortSignal/],
  ['evaluate(null, text)', () => evaluate(null as never, 'abc'), /^model must be a Model/],
];

for (const backend of availableBackends().filter((b) => b.available).map((b) => b.name)) {
  describe(`misuse of a ${backend} model`, () => {
    for (const [name, call, pattern] of MISUSE) {
      test(`${name} is a one-line MicroGPTError naming the argument`, async () => {
        const model = await createModel(CONFIG, randomTestWeights(CONFIG, 1), VOCAB, { backend });
        try {
          await assert.rejects(async () => call(model), invalid(pattern));
        } finally {
          model.dispose();
        }
      });
    }
  });

  describe(`createModel with bad weights (${backend})`, () => {
    const good = randomTestWeights(CONFIG, 2);
    const cases: readonly (readonly [string, unknown, RegExp])[] = [
      ['missing weights', undefined, /^weights must be an object, got undefined/],
      ['null weights', null, /^weights must be an object, got null/],
      ['no layers', { ...good, layers: undefined }, /^weights\.layers must be an array of nLayer \(2\) layers, got undefined/],
      ['too few layers', { ...good, layers: good.layers.slice(1) }, /^weights\.layers must be an array of nLayer \(2\) layers, got 1/],
      ['a null layer', { ...good, layers: [good.layers[0], null] }, /^weights\.layers\[1\] must be an object, got null/],
      ['a short array', { ...good, wpe: good.wpe.subarray(1) }, /^weights\.wpe must be a Float32Array of 64 elements \(shape \[8, 8\]\), got a Float32Array of 63/],
      ['a long array', { ...good, wte: new Float32Array(65) }, /^weights\.wte must be a Float32Array of 64 elements/],
      ['a plain array', { ...good, lnfWeight: Array.from(good.lnfWeight) }, /^weights\.lnfWeight must be a Float32Array of 8 elements \(shape \[8\]\), got an array/],
      ['a missing bias', { ...good, lnfBias: null }, /^weights\.lnfBias must be a Float32Array of 8 elements/],
      [
        'a swapped matrix',
        { ...good, layers: [{ ...good.layers[0], mlpFcWeight: good.layers[0]?.attnWeight }, good.layers[1]] },
        /^weights\.layers\[0\]\.mlpFcWeight must be a Float32Array of 256 elements \(shape \[32, 8\]\), got a Float32Array of 192/,
      ],
    ];
    for (const [name, weights, pattern] of cases) {
      test(`${name} is refused, naming the field`, async () => {
        await assert.rejects(createModel(CONFIG, weights as ModelWeights, VOCAB, { backend }), invalid(pattern));
      });
    }
    test('a bias given to a model without biases is refused', async () => {
      const config = { ...CONFIG, bias: false };
      const weights = { ...randomTestWeights(config, 3), lnfBias: new Float32Array(8) };
      await assert.rejects(createModel(config, weights, VOCAB, { backend }), invalid(/^weights\.lnfBias must be null for a model without biases/));
    });
    test('a vocabulary that is not an array is refused', async () => {
      await assert.rejects(createModel(CONFIG, good, null as never, { backend }), invalid(/^vocabulary must be an array of characters, got null/));
      await assert.rejects(createModel(CONFIG, good, 'abcdefgh' as never, { backend }), invalid(/^vocabulary must be an array of characters, got string/));
    });
  });
}

describe('CONFIG_LIMITS', () => {
  const base: ModelConfig = { vocabSize: 65, blockSize: 256, nLayer: 6, nHead: 6, nEmbd: 384, bias: true };
  const refused = (pattern: RegExp) => isOneLineError('ERR_INVALID_CONFIG', pattern);

  test('admit the nanoGPT models: shakespeare_char and gpt2 to gpt2-xl', () => {
    for (const c of [
      base,
      { vocabSize: 50304, blockSize: 1024, nLayer: 12, nHead: 12, nEmbd: 768, bias: true },
      { vocabSize: 50304, blockSize: 1024, nLayer: 48, nHead: 25, nEmbd: 1600, bias: true },
      { vocabSize: 65, blockSize: CONFIG_LIMITS.blockSize, nLayer: 8, nHead: 8, nEmbd: 512, bias: false },
    ]) {
      assert.deepEqual(validateConfig(c), c);
    }
  });

  test('each field is refused one past its limit', () => {
    for (const field of ['vocabSize', 'blockSize', 'nLayer', 'nHead', 'nEmbd'] as const) {
      const limit = CONFIG_LIMITS[field];
      assert.throws(() => validateConfig({ ...base, [field]: limit + 1 }), refused(new RegExp(`${field} must be an integer from 1 to ${limit}, got ${limit + 1}`)));
    }
  });

  test('a tiny file cannot ask for unbounded compute or memory', () => {
    // The reported case: a 0.3 MB safetensors, blockSize 65,536, 64 layers, width 1.
    assert.throws(() => validateConfig({ vocabSize: 2, blockSize: 65536, nLayer: 64, nHead: 1, nEmbd: 1, bias: false }), refused(/blockSize must be/));
    // Within every per-field limit, heads of width 1 over a full window: too many attention scores.
    assert.throws(
      () => validateConfig({ vocabSize: 2, blockSize: 4096, nLayer: 64, nHead: 64, nEmbd: 64, bias: false }),
      refused(/nLayer x nHead x blockSize\^2 \(68719476736\) must be at most 4294967296/),
    );
    // A KV cache of 2 x 64 x 4096 x 8192 floats (16 GiB) for every session.
    assert.throws(
      () => validateConfig({ vocabSize: 2, blockSize: 4096, nLayer: 64, nHead: 16, nEmbd: 8192, bias: false }),
      refused(/nLayer x blockSize x nEmbd \(2147483648\) must be at most 268435456/),
    );
    assert.throws(() => validateConfig({ ...base, nHead: 1, nEmbd: 1024 }), refused(/head size nEmbd \/ nHead \(1024\) must be at most 512/));
  });
});

describe('model sources that are not files', () => {
  test('a FIFO, a device or a socket is refused without opening it (a FIFO would block forever)', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'microgpt-fifo-'));
    try {
      const fifo = join(dir, 'ckpt.pt');
      if (spawnSync('mkfifo', [fifo]).status !== 0) return t.skip('no mkfifo on this system');
      await assert.rejects(loadModel(fifo), invalid(/ckpt\.pt is not a regular file or a directory$/));
      await assert.rejects(loadModel(dir), invalid(/ckpt\.pt is not a regular file$/));
      await assert.rejects(loadModel(fixture('models', 'tiny-bias', 'ckpt.pt'), { meta: fifo }), isOneLineError('ERR_BAD_CHECKPOINT', /ckpt\.pt: is not a regular file$/));
      await assert.rejects(loadModel('/dev/zero'), invalid(/^\/dev\/zero is not a regular file or a directory$/));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('names from a file are quoted in messages', () => {
  test('a tensor name holding a newline stays on one line', () => {
    const tensors = new Map([['transformer.wte.weight\nFAKE: injected', { shape: [8, 8], data: new Float32Array(64) }]]);
    assert.throws(() => assembleWeights(CONFIG, tensors, 'x.safetensors'), isOneLineError('ERR_BAD_CHECKPOINT', /unexpected tensor "transformer\.wte\.weight\\nFAKE: injected"/));
  });

  test('a path holding a newline is quoted', () => {
    assert.throws(() => assembleWeights(CONFIG, new Map(), 'dir\n/x.safetensors'), isOneLineError('ERR_BAD_CHECKPOINT', /^"dir\\n\/x\.safetensors": missing tensor/));
  });

  test('a model path holding a newline is quoted', async () => {
    await assert.rejects(loadModel('no/such\ndir'), invalid(/^cannot read model "no\/such\\ndir": no such file or directory$/));
  });

  test('a vocabulary entry holding a newline is quoted', () => {
    assert.throws(() => new CharTokenizer(['a', 'b\nc']), invalid(/vocabulary entry 1 must be a single character, got "b\\nc"/));
  });
});
