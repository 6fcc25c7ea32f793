// Every SIMD kernel of the native engine against its scalar reference (and the reference
// against the js backend's float64 math), on odd shapes: sizes that are not multiples of any
// vector width, single rows, a whole block. An instruction set is skipped only when this CPU
// lacks it; a missing native build fails these tests (CI has compilers).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { erf, layerNorm, linear } from '../lib/backends/js/math.js';
import { loadAddon, type Addon, type AddonIsa } from '../lib/backends/native/binding.js';
import { randomArray } from './helpers.js';

const load = loadAddon();
test('the native addon loads and passes its self-check', () => {
  assert.equal(load.reason, null, `native engine unavailable: ${load.reason}`);
});
const addon = load.addon as Addon;

/** Largest |a - b| / (1 + |b|). */
function relDiff(a: Float32Array, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number)) / (1 + Math.abs(b[i] as number));
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

const SIMD_ISAS: AddonIsa[] = ['avx2', 'avx512', 'neon'];

const matmulShapes: [number, number, number][] = [
  // [T, K, N]
  [1, 36, 108],
  [1, 20, 65],
  [1, 384, 1152],
  [1, 1536, 384],
  [2, 16, 48],
  [7, 36, 65],
  [24, 36, 144],
  [13, 17, 33],
  [64, 20, 80],
  [31, 384, 97],
];

function gelu64(x: number): number {
  return 0.5 * x * (1 + erf(x * Math.SQRT1_2));
}

interface AttentionCase {
  R: number;
  first: number;
  hs: number;
  qStride: number;
  /** Floats between tiles of 16 keys in the engine's key layout: at least 16 hs (16 C in a model). */
  tileStride: number;
  vStride: number;
}

/** The engine's key-tile layout: key j's element d at floor(j / 16) * tileStride + d * 16 + j % 16. */
const KEY_TILE = 16;

// R queries at positions first..first+R-1; first + R = 256 is a whole block of the char models.
const attentionCases: AttentionCase[] = [
  { R: 1, first: 0, hs: 4, qStride: 12, tileStride: 64, vStride: 16 },
  { R: 1, first: 4, hs: 6, qStride: 18, tileStride: 96, vStride: 36 },
  { R: 1, first: 16, hs: 12, qStride: 36, tileStride: 200, vStride: 36 },
  { R: 1, first: 255, hs: 64, qStride: 1152, tileStride: 6144, vStride: 384 },
  { R: 2, first: 0, hs: 16, qStride: 48, tileStride: 256, vStride: 32 },
  { R: 3, first: 30, hs: 20, qStride: 20, tileStride: 320, vStride: 20 },
  { R: 6, first: 0, hs: 64, qStride: 1152, tileStride: 6144, vStride: 384 },
  { R: 6, first: 250, hs: 64, qStride: 1152, tileStride: 6144, vStride: 384 },
  { R: 7, first: 57, hs: 3, qStride: 9, tileStride: 48, vStride: 9 },
  { R: 8, first: 13, hs: 48, qStride: 144, tileStride: 800, vStride: 48 },
  { R: 8, first: 100, hs: 33, qStride: 99, tileStride: 528, vStride: 40 },
];

/** Random q, keys (logical (hs, n) and in the engine's tiles) and values for a case. */
function attentionInputs(c: AttentionCase): { q: Float32Array; keysT: Float32Array; keys: Float32Array; values: Float32Array } {
  const n = c.first + c.R;
  const seed = c.R * 1000 + c.first * 7 + c.hs;
  const keysT = randomArray(c.hs * n, seed + 1, 2); // element d of key j at d * n + j
  // Exactly as long as the kernel may read (the addon checks no less is given; reads past it are
  // the sanitizer's and valgrind's to find, not this test's).
  const keys = new Float32Array(Math.floor((n - 1) / KEY_TILE) * c.tileStride + (c.hs - 1) * KEY_TILE + ((n - 1) % KEY_TILE) + 1);
  for (let j = 0; j < n; j++) {
    for (let d = 0; d < c.hs; d++) keys[Math.floor(j / KEY_TILE) * c.tileStride + d * KEY_TILE + (j % KEY_TILE)] = keysT[d * n + j] as number;
  }
  return {
    q: randomArray((c.R - 1) * c.qStride + c.hs, seed, 2),
    keysT,
    keys,
    values: randomArray((n - 1) * c.vStride + c.hs, seed + 2),
  };
}

/** The definition, in float64: row r = softmax(q_r · K^T / sqrt(hs)) V over keys 0..first+r. */
function attention64(c: AttentionCase, q: Float32Array, keysT: Float32Array, values: Float32Array): number[] {
  const out: number[] = [];
  const n = c.first + c.R;
  for (let r = 0; r < c.R; r++) {
    const nr = c.first + r + 1;
    const s: number[] = [];
    for (let j = 0; j < nr; j++) {
      let dot = 0;
      for (let d = 0; d < c.hs; d++) dot += (q[r * c.qStride + d] as number) * (keysT[d * n + j] as number);
      s.push(dot / Math.sqrt(c.hs));
    }
    const max = Math.max(...s);
    const e = s.map((v) => Math.exp(v - max));
    const sum = e.reduce((a, b) => a + b, 0);
    for (let d = 0; d < c.hs; d++) {
      let acc = 0;
      for (let j = 0; j < nr; j++) acc += (e[j] as number) * (values[j * c.vStride + d] as number);
      out.push(acc / sum);
    }
  }
  return out;
}

describe('scalar reference kernels match the js backend (float64)', () => {
  test('attention', () => {
    for (const c of attentionCases) {
      const { q, keysT, keys, values } = attentionInputs(c);
      const out = new Float32Array(c.R * c.hs);
      addon.testing.attention('scalar', out, q, keys, values, c.R, c.first, c.hs, c.qStride, c.tileStride, c.vStride);
      assert.ok(relDiff(out, attention64(c, q, keysT, values)) < 1e-6, JSON.stringify(c));
    }
  });

  test('matmul, every epilogue', () => {
    for (const [T, K, N] of matmulShapes) {
      const x = randomArray(T * K, T * 7 + K);
      const W = randomArray(N * K, N + 3, 0.2);
      const b = randomArray(N, N + 5);
      const want = new Float32Array(T * N);
      linear(want, x, W, b, T, K, N);
      for (const epilogue of [0, 1, 2] as const) {
        const out = randomArray(T * N, 99);
        const before = out.slice();
        addon.testing.matmul('scalar', out, x, W, b, T, K, N, epilogue);
        const expected = Array.from(want, (v, i) => (epilogue === 0 ? v : epilogue === 1 ? gelu64(v) : (before[i] as number) + v));
        assert.ok(relDiff(out, expected) < 2e-5, `T=${T} K=${K} N=${N} epilogue ${epilogue}: ${relDiff(out, expected)}`);
      }
    }
  });

  test('layernorm', () => {
    for (const [T, C] of [[1, 36], [3, 20], [24, 7], [5, 384]] as const) {
      const x = randomArray(T * C, C, 3);
      const w = randomArray(C, C + 1);
      const b = randomArray(C, C + 2);
      const want = new Float32Array(T * C);
      layerNorm(want, x, w, b, T, C);
      const out = new Float32Array(T * C);
      addon.testing.layernorm('scalar', out, x, w, b, T, C);
      assert.ok(relDiff(out, want) < 1e-5, `T=${T} C=${C}`);
    }
  });
});

for (const isa of SIMD_ISAS) {
  const supported = addon?.cpu().supported.includes(isa) ?? false;
  const skip = supported ? false : `this CPU (or this build's architecture) has no ${isa}`;
  describe(`${isa} kernels match the scalar reference`, { skip }, () => {
    test('matmul (GEMM for T > 1, GEMV for T = 1), every epilogue, with and without bias', () => {
      for (const [T, K, N] of matmulShapes) {
        const x = randomArray(T * K, T + K);
        const W = randomArray(N * K, N * 3 + K, 0.2);
        for (const b of [randomArray(N, N), null]) {
          for (const epilogue of [0, 1, 2] as const) {
            const init = randomArray(T * N, 7);
            const want = init.slice();
            const got = init.slice();
            addon.testing.matmul('scalar', want, x, W, b, T, K, N, epilogue);
            addon.testing.matmul(isa, got, x, W, b, T, K, N, epilogue);
            const d = relDiff(got, want);
            assert.ok(d < 1e-5, `T=${T} K=${K} N=${N} bias=${b !== null} epilogue ${epilogue}: ${d}`);
          }
        }
      }
    });

    test('a row gives the same bits alone (decode) as inside a block (prefill)', () => {
      const [T, K, N] = [9, 36, 144];
      const x = randomArray(T * K, 1);
      const W = randomArray(N * K, 2, 0.2);
      const block = new Float32Array(T * N);
      addon.testing.matmul(isa, block, x, W, null, T, K, N, 0);
      for (let t = 0; t < T; t++) {
        const row = new Float32Array(N);
        addon.testing.matmul(isa, row, x.subarray(t * K, (t + 1) * K), W, null, 1, K, N, 0);
        assert.deepEqual(row, block.subarray(t * N, (t + 1) * N), `row ${t}`);
      }
    });

    test('layernorm, with and without bias', () => {
      for (const [T, C] of [[1, 36], [3, 20], [24, 7], [8, 384], [2, 17]] as const) {
        const x = randomArray(T * C, C * 5, 4);
        const w = randomArray(C, C + 1);
        for (const b of [randomArray(C, C + 2), null]) {
          const want = new Float32Array(T * C);
          const got = new Float32Array(T * C);
          addon.testing.layernorm('scalar', want, x, w, b, T, C);
          addon.testing.layernorm(isa, got, x, w, b, T, C);
          assert.ok(relDiff(got, want) < 1e-5, `T=${T} C=${C} bias=${b !== null}: ${relDiff(got, want)}`);
        }
      }
    });

    test('attention: blocks of 1 to 8 queries, 1 to blockSize keys, odd head sizes and strides', () => {
      for (const c of attentionCases) {
        const { q, keys, values } = attentionInputs(c);
        const want = new Float32Array(c.R * c.hs);
        const got = new Float32Array(c.R * c.hs);
        addon.testing.attention('scalar', want, q, keys, values, c.R, c.first, c.hs, c.qStride, c.tileStride, c.vStride);
        addon.testing.attention(isa, got, q, keys, values, c.R, c.first, c.hs, c.qStride, c.tileStride, c.vStride);
        assert.ok(relDiff(got, want) < 1e-5, `${JSON.stringify(c)}: ${relDiff(got, want)}`);
      }
    });

    test('attention: a query gives the same bits alone (decode) as inside a block (prefill)', () => {
      for (const c of attentionCases.filter((x) => x.R > 1)) {
        const { q, keys, values } = attentionInputs(c);
        const block = new Float32Array(c.R * c.hs);
        addon.testing.attention(isa, block, q, keys, values, c.R, c.first, c.hs, c.qStride, c.tileStride, c.vStride);
        for (let r = 0; r < c.R; r++) {
          const alone = new Float32Array(c.hs);
          const qr = q.subarray(r * c.qStride);
          addon.testing.attention(isa, alone, qr, keys, values, 1, c.first + r, c.hs, c.qStride, c.tileStride, c.vStride);
          assert.deepEqual(alone, block.subarray(r * c.hs, (r + 1) * c.hs), `${JSON.stringify(c)}: row ${r}`);
        }
      }
    });

    test("attention: a key a row does not see cannot reach it, not even an inf value", () => {
      const c: AttentionCase = { R: 6, first: 20, hs: 64, qStride: 64, tileStride: 1024, vStride: 64 };
      const { q, keys, values } = attentionInputs(c);
      values.fill(Infinity, (c.first + c.R - 1) * c.vStride, (c.first + c.R - 1) * c.vStride + c.hs); // the last row's own key
      const block = new Float32Array(c.R * c.hs);
      addon.testing.attention(isa, block, q, keys, values, c.R, c.first, c.hs, c.qStride, c.tileStride, c.vStride);
      for (let r = 0; r < c.R - 1; r++) {
        const alone = new Float32Array(c.hs);
        addon.testing.attention(isa, alone, q.subarray(r * c.qStride), keys, values, 1, c.first + r, c.hs, c.qStride, c.tileStride, c.vStride);
        assert.ok(alone.every(Number.isFinite), `row ${r} alone`);
        assert.deepEqual(block.subarray(r * c.hs, (r + 1) * c.hs), alone, `row ${r}`);
      }
    });

    test('gelu: the vectorised erf is within 1e-6 of the exact one', () => {
      const n = 4001; // not a multiple of any vector width: the tail path runs too
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = -12 + (24 * i) / (n - 1);
      const got = x.slice();
      addon.testing.gelu(isa, got);
      let worst = 0;
      for (let i = 0; i < n; i++) {
        const v = x[i] as number;
        const d = Math.abs((got[i] as number) - gelu64(v)) / Math.max(1, Math.abs(v));
        worst = Math.max(worst, d);
      }
      assert.ok(worst < 1e-6, `max |gelu - exact| / max(1, |x|) = ${worst}`);
    });
  });
}

test('the testing kernels reject bad arguments instead of crashing', () => {
  assert.throws(() => addon.testing.gelu('avx9000' as AddonIsa, new Float32Array(3)), /unknown instruction set/);
  assert.throws(() => addon.testing.matmul('scalar', new Float32Array(1), new Float32Array(4), new Float32Array(4), null, 2, 2, 2, 0), /out has 1 elements/);
  assert.throws(() => addon.testing.gelu('scalar', new Float64Array(3) as unknown as Float32Array), /Float32Array/);
});

// The benchmark's machine probes: they only report rates, so check that every instruction set's
// probe runs, gives a plausible rate, and that the SIMD ones beat the scalar loop they replace.
describe('machine probes (FMA peak, read bandwidth)', () => {
  const isas = addon.cpu().supported;
  test('every supported instruction set reports positive, finite rates', () => {
    for (const isa of isas) {
      const gflops = addon.testing.benchFmaPeak(isa, 1, 200_000);
      const gbs = addon.testing.benchReadBandwidth(isa, 4, 1, 3);
      assert.ok(Number.isFinite(gflops) && gflops > 0.1, `${isa} FMA ${gflops}`);
      assert.ok(Number.isFinite(gbs) && gbs > 0.1, `${isa} read ${gbs}`);
    }
  });
  test('vector FMAs outrun scalar ones', () => {
    const best = addon.cpu().best;
    if (best === 'scalar') return;
    const scalar = addon.testing.benchFmaPeak('scalar', 1, 1_000_000);
    const simd = addon.testing.benchFmaPeak(best, 1, 1_000_000);
    assert.ok(simd > 2 * scalar, `${best} ${simd} vs scalar ${scalar} GFLOP/s`);
  });
  test('bad arguments are errors, not crashes', () => {
    assert.throws(() => addon.testing.benchReadBandwidth('scalar', 9000, 1, 1), /megabytes must be at most 8192/);
    assert.throws(() => addon.testing.benchFmaPeak('scalar', 0, 10), /threads must be from 1/);
  });
});
