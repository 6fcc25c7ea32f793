// Weights kept in float16 (precision 'f16' and 'auto'): the conversion, the float16 matmul
// kernels against the scalar reference and against the float32 kernels, and whole models: a
// float16 checkpoint gives the same bits either way, a float32 one moves only by the rounding,
// and the js engine computes the same rounded model.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { jsBackend } from '../lib/backends/js/index.js';
import { loadAddon, type Addon, type AddonIsa } from '../lib/backends/native/binding.js';
import { addonTensors, nativeBackend } from '../lib/backends/native/index.js';
import type { ModelConfig } from '../lib/config.js';
import { roundToFloat16 } from '../lib/formats/dtype.js';
import { loadModel, MicroGPTError, readModelFile } from '../lib/index.js';
import { roundMatricesToFloat16 } from '../lib/weights.js';
import { expected, expectedLogits, fixture, maxAbsDiff, randomArray, randomTestWeights } from './helpers.js';

const load = loadAddon();
test('the native addon loads', () => {
  assert.equal(load.reason, null, `native engine unavailable: ${load.reason}`);
});
const addon = load.addon as Addon;
const supported: AddonIsa[] = addon?.cpu().supported ?? [];

test("the engine's float16 conversion rounds as the TypeScript codec does, specials included", () => {
  const specials = Float32Array.from([
    0, -0, 1, -1, 65504, 65519.99, 65520, -65520, 1e6, Infinity, -Infinity, 6.103515625e-5, 6.1e-5, 5.960464477539063e-8,
    2.98e-8, 2.9802322387695312e-8, 8.940696716308594e-8, 1e-9, 1.00048828125, 1.000732421875, 1.0009765625, 2049, 2051,
    0.1, 1 / 3, 3.4e38, 1.2e-38,
  ]);
  const values = new Float32Array(specials.length + 20000);
  values.set(specials);
  values.set(randomArray(10000, 1, 4), specials.length);
  values.set(randomArray(10000, 2, 1e-5), specials.length + 10000); // float16 subnormals
  const engine = values.slice();
  addon.testing.f16Round(engine);
  assert.deepEqual(engine, roundToFloat16(values));
  const nan = Float32Array.of(NaN);
  addon.testing.f16Round(nan);
  assert.ok(Number.isNaN(nan[0]));
});

const shapes: [number, number, number][] = [
  // [T, K, N]: decode (T = 1), a batch of decode steps, prefill tiles and tails, odd sizes
  [1, 36, 108],
  [1, 384, 1152],
  [3, 20, 65],
  [8, 48, 96],
  [13, 17, 33],
  [31, 384, 97],
];

for (const isa of ['scalar', ...supported.filter((i) => i !== 'scalar')] as AddonIsa[]) {
  describe(`${isa}: the float16 matmul`, () => {
    test('matches the scalar float16 reference, every epilogue', () => {
      for (const [T, K, N] of shapes) {
        const x = randomArray(T * K, T + K);
        const W = randomArray(N * K, N + K, 0.3);
        const b = randomArray(N, N);
        for (const epilogue of [0, 1, 2] as const) {
          const init = randomArray(T * N, 5);
          const want = init.slice();
          const got = init.slice();
          addon.testing.matmul('scalar', want, x, W, b, T, K, N, epilogue, true);
          addon.testing.matmul(isa, got, x, W, b, T, K, N, epilogue, true);
          assert.ok(maxAbsDiff(got, want) < 1e-4 * (1 + Math.sqrt(K)), `T=${T} K=${K} N=${N} epilogue ${epilogue}: ${maxAbsDiff(got, want)}`);
        }
      }
    });

    test('with float16-exact weights it gives the same bits as the float32 matmul', () => {
      for (const [T, K, N] of shapes) {
        const x = randomArray(T * K, T * 3 + K);
        const W = roundToFloat16(randomArray(N * K, N * 5 + K, 0.3));
        const b = randomArray(N, N + 1);
        const f32 = new Float32Array(T * N);
        const f16 = new Float32Array(T * N);
        addon.testing.matmul(isa, f32, x, W, b, T, K, N, 1);
        addon.testing.matmul(isa, f16, x, W, b, T, K, N, 1, true);
        assert.deepEqual(f16, f32, `T=${T} K=${K} N=${N}`);
      }
    });
  });
}

describe('models kept in float16', () => {
  const ids = (n: number, V: number) => Int32Array.from({ length: n }, (_, i) => (i * 5 + 1) % V);

  test("a float16 checkpoint: 'auto' keeps it in float16, with the same logits as float32, on every instruction set", async () => {
    const e = expected('tiny-nobias-f16');
    const file = await readModelFile(fixture(e.checkpoint));
    const x = ids(file.config.blockSize, file.config.vocabSize);
    for (const isa of supported) {
      const f32 = await nativeBackend.load(file.config, file.weights, { precision: 'f32', isa });
      const auto = await nativeBackend.load(file.config, file.weights, { isa });
      assert.equal(auto.precision, 'f16');
      assert.deepEqual(await auto.forward(x), await f32.forward(x), isa);
      f32.dispose();
      auto.dispose();
    }
  });

  test("a float32 checkpoint: 'auto' keeps float32; 'f16' moves the logits by the rounding only, as in the js engine", async () => {
    const e = expected('tiny-bias');
    const file = await readModelFile(fixture(e.checkpoint));
    const auto = await nativeBackend.load(file.config, file.weights);
    assert.equal(auto.precision, 'f32');
    auto.dispose();
    const x = Int32Array.from(e.logits.ids);
    const native = await nativeBackend.load(file.config, file.weights, { precision: 'f16' });
    const js = await jsBackend.load(file.config, file.weights, { precision: 'f16' });
    assert.equal(native.precision, 'f16');
    assert.equal(js.precision, 'f16');
    const got = await native.forward(x);
    assert.ok(maxAbsDiff(got, await js.forward(x)) < 1e-4, 'native f16 vs js f16');
    // The rounding is visible (this is not float32) but small next to the logits' scale.
    const torch = expectedLogits(e);
    const moved = maxAbsDiff(got, torch);
    assert.ok(moved > 1e-6 && moved < 2e-2, `f16 vs torch f32: ${moved}`);
    native.dispose();
  });

  test("the js engine's 'f16' is the float32 engine on rounded matrices", async () => {
    const config: ModelConfig = { vocabSize: 65, blockSize: 32, nLayer: 2, nHead: 4, nEmbd: 48, bias: true };
    const weights = randomTestWeights(config, 7);
    const x = ids(32, 65);
    const f16 = await jsBackend.load(config, weights, { precision: 'f16' });
    const rounded = await jsBackend.load(config, roundMatricesToFloat16(weights));
    assert.deepEqual(await f16.forward(x), await rounded.forward(x));
    const native = await nativeBackend.load(config, roundMatricesToFloat16(weights), { precision: 'auto' });
    assert.equal(native.precision, 'f16');
    // 'auto' resolves alike in both engines: f16 for float16 values, f32 otherwise.
    assert.equal((await jsBackend.load(config, roundMatricesToFloat16(weights))).precision, 'f16');
    assert.equal((await jsBackend.load(config, weights)).precision, 'f32');
    assert.ok(maxAbsDiff(await native.forward(x), await f16.forward(x)) < 1e-4);
    native.dispose();
  });

  test("'f16' refuses weights beyond float16's range in every engine; 'auto' keeps them in float32", async () => {
    const config: ModelConfig = { vocabSize: 65, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16, bias: false };
    const weights = randomTestWeights(config, 3);
    (weights.layers[0]?.mlpFcWeight as Float32Array)[5] = 70000;
    const refused = (err: unknown) => err instanceof MicroGPTError && err.code === 'ERR_INVALID_ARGUMENT' && /beyond float16's range/.test(err.message);
    await assert.rejects(nativeBackend.load(config, weights, { precision: 'f16' }), refused);
    await assert.rejects(jsBackend.load(config, weights, { precision: 'f16' }), refused);
    const auto = await nativeBackend.load(config, weights, { precision: 'auto' });
    assert.equal(auto.precision, 'f32');
    auto.dispose();
    // The addon refuses on its own too (defence in depth), with a rejected promise, not a crash.
    const m = new addon.Model(config, { threads: 1, precision: 'f16' });
    await assert.rejects(m.load(addonTensors(config, weights)), /beyond float16's range/);
    assert.throws(() => new addon.Model(config, { threads: 1, precision: 'f8' as 'f16' }), /precision must be 'f32', 'f16' or 'auto'/);
  });

  test('the precision option is checked before anything loads', async () => {
    await assert.rejects(loadModel('default', { precision: 'half' as 'f16' }), /precision must be 'auto', 'f32' or 'f16', got "half"/);
  });

  test("the bundled model is float16 on disk: 'auto' keeps it so, with the same text as float32", async () => {
    const auto = await loadModel('default', { backend: 'native' });
    const f32 = await loadModel('default', { backend: 'native', precision: 'f32' });
    assert.equal(auto.precision, 'f16');
    assert.equal(f32.precision, 'f32');
    assert.deepEqual(await auto.logits(auto.encode('ROMEO:')), await f32.logits(f32.encode('ROMEO:')));
    const options = { temperature: 0.8, topK: 40, seed: 5, maxNewTokens: 100 };
    assert.equal(await auto.generate('ROMEO:', options), await f32.generate('ROMEO:', options));
    auto.dispose();
    f32.dispose();
  });
});
