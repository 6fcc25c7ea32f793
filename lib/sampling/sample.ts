/**
 * Choosing the next token from the logits of the last position, with nanoGPT's semantics:
 * divide by the temperature, keep the top-k (values tied with the k-th survive), softmax, draw.
 * The uniform random number is an argument, so a test can pin every draw.
 */
import { CONFIG_LIMITS, describe } from '../config.js';
import { invalidArgument } from '../errors.js';

export interface SamplerSettings {
  /** 0 picks the most likely token (greedy); otherwise logits are divided by it. */
  readonly temperature: number;
  /** Keep only the k most likely tokens (and those tied with the k-th); undefined keeps all. */
  readonly topK?: number | undefined;
  /** Nucleus sampling: keep the most likely tokens whose probabilities sum to at least topP. */
  readonly topP?: number | undefined;
}

/** Index of the largest logit; the lowest index among equals, as torch.argmax. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  let bestValue = logits[0] as number;
  for (let i = 1; i < logits.length; i++) {
    const v = logits[i] as number;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/**
 * Reusable scratch space: sampling runs once per generated token, so it should not allocate.
 * One Sampler per generation; not shared between concurrent generations.
 */
export class Sampler {
  private probs: Float64Array;
  private scratch: Float64Array;
  private order: Int32Array;
  /** What the last sample() drew from: its argmax when greedy, else the weights in probs summing to total. */
  private lastGreedy = -1;
  private lastTotal = 0;

  constructor(vocabSize: number) {
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 1 || vocabSize > CONFIG_LIMITS.vocabSize) {
      throw invalidArgument(`vocabSize must be an integer from 1 to ${CONFIG_LIMITS.vocabSize}, got ${describe(vocabSize)}`);
    }
    this.probs = new Float64Array(vocabSize);
    this.scratch = new Float64Array(vocabSize);
    this.order = new Int32Array(vocabSize);
  }

  /**
   * Draws a token. `u` is uniform in [0, 1). The caller validated the settings (sampling options)
   * and the logits are those of one position, length vocabSize.
   */
  sample(logits: Float32Array, settings: SamplerSettings, u: number): number {
    if (settings.temperature === 0) return (this.lastGreedy = argmax(logits));
    this.lastGreedy = -1;
    const V = logits.length;
    const probs = this.probs;
    for (let i = 0; i < V; i++) probs[i] = (logits[i] as number) / settings.temperature;

    let threshold = -Infinity;
    if (settings.topK !== undefined && settings.topK < V) threshold = this.kthLargest(probs, V, settings.topK);

    let max = -Infinity;
    for (let i = 0; i < V; i++) if ((probs[i] as number) >= threshold && (probs[i] as number) > max) max = probs[i] as number;
    let total = 0;
    for (let i = 0; i < V; i++) {
      const v = probs[i] as number;
      const p = v >= threshold ? Math.exp(v - max) : 0;
      probs[i] = p;
      total += p;
    }

    if (settings.topP !== undefined && settings.topP < 1) total = this.nucleus(V, total, settings.topP);
    this.lastTotal = total;

    // Inverse transform over token ids in ascending order, as torch.multinomial walks the CDF.
    const target = u * total;
    let cumulative = 0;
    let lastKept = 0;
    for (let i = 0; i < V; i++) {
      const p = probs[i] as number;
      if (p === 0) continue;
      cumulative += p;
      lastKept = i;
      if (cumulative > target) return i;
    }
    return lastKept; // u * total rounded up to the sum: the last possible token
  }

  /**
   * The probability token `id` had in the last sample() call's draw, after temperature, top-k and
   * top-p (0 for a token they filtered out; greedy: 1 for the argmax, 0 for the others). Valid
   * until the next sample() call.
   */
  drawnProbability(id: number): number {
    if (this.lastGreedy >= 0) return id === this.lastGreedy ? 1 : 0;
    return ((this.probs[id] as number | undefined) ?? 0) / this.lastTotal;
  }

  /** The k-th largest of values[0..V) by quickselect over a copy (O(V), no sort). */
  private kthLargest(values: Float64Array, V: number, k: number): number {
    const a = this.scratch;
    a.set(values.subarray(0, V));
    let lo = 0;
    let hi = V - 1;
    const want = k - 1; // index in descending order
    while (lo < hi) {
      const pivot = a[(lo + hi) >>> 1] as number;
      let i = lo;
      let j = hi;
      while (i <= j) {
        while ((a[i] as number) > pivot) i++;
        while ((a[j] as number) < pivot) j--;
        if (i <= j) {
          const tmp = a[i] as number;
          a[i] = a[j] as number;
          a[j] = tmp;
          i++;
          j--;
        }
      }
      if (want <= j) hi = j;
      else if (want >= i) lo = i;
      else break;
    }
    return a[want] as number;
  }

  /**
   * Zeroes the tail of the distribution: keeps the most likely tokens until their mass reaches
   * topP of the total (at least one token; ties broken by the lower id). Returns the kept mass.
   */
  private nucleus(V: number, total: number, topP: number): number {
    const probs = this.probs;
    let n = 0;
    for (let i = 0; i < V; i++) if ((probs[i] as number) > 0) this.order[n++] = i;
    const order = this.order.subarray(0, n);
    order.sort((a, b) => (probs[b] as number) - (probs[a] as number) || a - b);
    const limit = topP * total;
    let kept = 0;
    let cut = n;
    for (let r = 0; r < n; r++) {
      if (kept >= limit) {
        cut = r;
        break;
      }
      kept += probs[order[r] as number] as number;
    }
    for (let r = cut; r < n; r++) probs[order[r] as number] = 0;
    return kept;
  }
}
