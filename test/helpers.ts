import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import type { ModelRuntime } from '../lib/backends/types.js';
import type { ModelConfig } from '../lib/config.js';
import { MicroGPTError } from '../lib/errors.js';
import type { LayerWeights, ModelWeights } from '../lib/weights.js';

/** The package root: the nearest folder above this file holding package.json (tests run from dist/test/). */
export const ROOT = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('package.json not found above the test files');
    dir = up;
  }
  return dir;
})();

export const FIXTURES = join(ROOT, 'test', 'fixtures');

export function fixture(...parts: string[]): string {
  return join(FIXTURES, ...parts);
}

/** What scripts/make_fixtures.py recorded from PyTorch for one model. */
export interface ExpectedModel {
  config: { vocabSize: number; blockSize: number; nLayer: number; nHead: number; nEmbd: number; bias: boolean };
  parameters: number;
  storedDType: string;
  checkpoint: string;
  safetensors: string | null;
  logits: { ids: number[]; file: string };
  greedy: { prompt: string; maxNewTokens: number; continuation: string };
  sampled: {
    seed: number;
    temperature: number;
    topK: number | null;
    topP: number | null;
    maxNewTokens: number;
    continuation: string;
    samples: { maxNewTokens: number; continuations: string[] };
  }[];
}

export const MODEL_NAMES = ['tiny-bias', 'tiny-nobias-f16', 'tiny-bf16'] as const;

export function expected(name: string): ExpectedModel {
  return JSON.parse(readFileSync(fixture('expected', `${name}.json`), 'utf8')) as ExpectedModel;
}

export function expectedLogits(e: ExpectedModel): Float32Array {
  const bytes = readFileSync(fixture(e.logits.file));
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** Largest absolute difference, or Infinity on a length mismatch. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number));
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

/** n seeded uniform values in [-scale, scale) (mulberry32). */
export function randomArray(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    a[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

/**
 * Seeded random weights with every parameter non-trivial (LayerNorm weights near 1, small
 * biases), for tests that compare engines with each other rather than with PyTorch.
 */
export function randomTestWeights(config: ModelConfig, seed: number): ModelWeights {
  let s = seed >>> 0;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 - 0.5;
  };
  const C = config.nEmbd;
  const t = (n: number, scale = 0.08) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = next() * scale;
    return a;
  };
  const ones = (n: number) => {
    const a = t(n, 0.2);
    for (let i = 0; i < n; i++) a[i] = (a[i] as number) + 1;
    return a;
  };
  const b = (n: number) => (config.bias ? t(n, 0.02) : null);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayer; l++) {
    layers.push({
      ln1Weight: ones(C), ln1Bias: b(C),
      attnWeight: t(3 * C * C), attnBias: b(3 * C),
      attnProjWeight: t(C * C), attnProjBias: b(C),
      ln2Weight: ones(C), ln2Bias: b(C),
      mlpFcWeight: t(4 * C * C), mlpFcBias: b(4 * C),
      mlpProjWeight: t(4 * C * C, 0.04), mlpProjBias: b(C),
    });
  }
  return { wte: t(config.vocabSize * C, 1), wpe: t(config.blockSize * C, 0.5), layers, lnfWeight: ones(C), lnfBias: b(C) };
}

/**
 * A session's KV cache against a full forward pass of `ids`: fed in each of `chunkings` (sizes
 * summing to ids.length; 1 goes through decode, more through prefill), every step's logits equal
 * the full pass's row (within `tolerance`; 0 asks for the same bits); a reset session computes
 * position 0 afresh; overfilling the block fails.
 */
export async function checkKvCacheChunking(runtime: ModelRuntime, ids: Int32Array, chunkings: number[][], tolerance = 1e-5): Promise<void> {
  const V = runtime.config.vocabSize;
  const full = await runtime.forward(ids);
  for (const chunks of chunkings) {
    const session = runtime.createSession();
    let at = 0;
    for (const size of chunks) {
      const last = size === 1 ? await session.decode(ids[at] as number) : await session.prefill(ids.subarray(at, at + size));
      at += size;
      assert.equal(session.length, at);
      const row = full.subarray((at - 1) * V, at * V);
      if (tolerance === 0) {
        assert.deepEqual(last, row, `chunks ${chunks.join(',')}: position ${at - 1}: not the same bits`);
      } else {
        const diff = maxAbsDiff(last, row);
        assert.ok(diff < tolerance, `chunks ${chunks.join(',')}: position ${at - 1}: ${diff}`);
      }
    }
    session.reset();
    assert.equal(session.length, 0);
    const again = await session.prefill(ids.subarray(0, 1));
    assert.ok(maxAbsDiff(again, full.subarray(0, V)) < 1e-6);
    await assert.rejects(session.prefill(ids), /exceeds blockSize/);
    session.dispose();
  }
}

/** Runs an ES module in a fresh node (its own libuv thread pool and exit), and returns its output. */
export function runChild(code: string, env: Record<string, string> = {}, flags: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', code], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, ...env },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** For assert.rejects/throws: the error is a MicroGPTError of `code` whose message matches `pattern`. */
export function isMicroGPTError(code: string, pattern: RegExp): (err: unknown) => boolean {
  return (err: unknown): boolean => {
    assert.ok(err instanceof MicroGPTError, `expected a MicroGPTError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.match(err.message, pattern);
    return true;
  };
}
