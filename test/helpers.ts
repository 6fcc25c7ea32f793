import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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
