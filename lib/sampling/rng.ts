import { describe } from '../config.js';
import { invalidArgument } from '../errors.js';

const MASK64 = (1n << 64n) - 1n;
/** Added to the seed once per sample index, so each sample of a call has its own stream. */
const STREAM_STRIDE = 0xd1b54a32d192ed03n;

/**
 * The seeded generator behind every sampled token, the same on every backend:
 *
 * - xoshiro128** (Blackman and Vigna, 2018) produces 32-bit words;
 * - its 128-bit state is the first two outputs of SplitMix64, each split into its low then high
 *   32-bit half, with SplitMix64's state starting at (seed + stream * 0xD1B54A32D192ED03) mod 2^64;
 * - a uniform number in [0, 1) is the word's top 24 bits divided by 2^24 (exact in float32 too).
 *
 * `stream` is the index of the sample within one call, so sample i reads the same numbers whether
 * the samples are drawn one after another or side by side. scripts/make_fixtures.py implements the
 * same algorithm in Python, and the tests compare the two.
 */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number, stream = 0) {
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw invalidArgument(`seed must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}, got ${describe(seed)}`);
    }
    if (!Number.isSafeInteger(stream) || stream < 0) throw invalidArgument(`stream must be a non-negative integer, got ${describe(stream)}`);
    let state = (BigInt(seed) + BigInt(stream) * STREAM_STRIDE) & MASK64;
    const splitmix = (): bigint => {
      state = (state + 0x9e3779b97f4a7c15n) & MASK64;
      let z = state;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
      return z ^ (z >> 31n);
    };
    const a = splitmix();
    const b = splitmix();
    this.s0 = Number(a & 0xffffffffn);
    this.s1 = Number(a >> 32n);
    this.s2 = Number(b & 0xffffffffn);
    this.s3 = Number(b >> 32n);
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the one state xoshiro cannot leave
  }

  /** The next 32-bit word, as an unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** A uniform number in [0, 1) with 24 random bits. */
  uniform(): number {
    return (this.nextUint32() >>> 8) / 16777216;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
