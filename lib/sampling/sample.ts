/**
 * Choosing the next token from the logits of the last position, with nanoGPT's semantics:
 * divide by the temperature, keep the top-k (values tied with the k-th survive), softmax, draw.
 * The uniform random number is an argument, so a test can pin every draw.
 */
import type { TopLogits } from '../backends/types.js';
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

/**
 * The id of the largest candidate (the lowest among equals): argmax of the logits they came from,
 * which hold nothing larger.
 */
function argmaxOf(top: TopLogits): number {
  const best = argmax(top.values);
  return top.ids[best] as number;
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
  /** The ids the last sample() kept (top-k), in ascending order: kept[0..keptCount). */
  private kept: Int32Array;
  private keptCount = 0;
  /** The largest value kthLargest() saw. */
  private largest = -Infinity;
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
    this.kept = new Int32Array(vocabSize);
  }

  /**
   * Draws a token. `u` is uniform in [0, 1). The caller validated the settings (sampling options)
   * and the logits are those of one position, length vocabSize; or, from an engine that selects
   * them (TopKRequest), the top-k candidates among them, selected with at least settings.topK
   * (greedy: any k), which give the same draw: the candidates hold every logit the top-k keeps.
   */
  sample(logits: Float32Array | TopLogits, settings: SamplerSettings, u: number): number {
    // A typed array of any realm is logits; candidates are a plain object.
    const top = ArrayBuffer.isView(logits) ? null : (logits as TopLogits);
    if (settings.temperature === 0) return (this.lastGreedy = top === null ? argmax(logits as Float32Array) : argmaxOf(top));
    this.lastGreedy = -1;
    const V = top === null ? (logits as Float32Array).length : this.probs.length;
    const values = top === null ? (logits as Float32Array) : top.values;
    const n = values.length; // V, or the candidates'
    const T = settings.temperature;
    const probs = this.probs;
    const kept = this.kept;
    // probs is 0 but at the ids the last draw kept (its invariant): clear those alone, rather than
    // writing all of a large vocabulary every token.
    for (let j = 0; j < this.keptCount; j++) probs[kept[j] as number] = 0;
    // Dividing by T > 0 keeps the order of the logits, so the k-th largest quotient is the k-th
    // largest logit divided, and the largest quotient (always kept) the largest logit divided:
    // both found on the logits in one pass, without a divided copy. Among candidates that hold
    // the k largest logits, the k-th largest is the same.
    const topK = settings.topK !== undefined && settings.topK < V ? settings.topK : 0;
    if (top !== null && (topK === 0 || topK > n)) {
      throw new Error(`internal: ${n} top-k candidates cannot give a draw keeping ${topK === 0 ? 'every token' : `the top ${topK}`}`);
    }
    const kth = topK > 0 ? this.kthLargest(values, n, topK) : -Infinity;
    const threshold = kth / T;
    const max = (topK > 0 ? this.largest : (values[argmax(values)] as number)) / T;
    // Which logits the threshold keeps: those whose quotient reaches it. Where the threshold is a
    // normal double, that is exactly the logits at or above the k-th (float32 logits below it
    // differ from it by a part in 2^24 at least, which division by T in double precision keeps
    // apart), so the pass compares without dividing; an infinite, zero or tiny threshold (a
    // quotient may round onto it) compares the quotients.
    const plain = topK > 0 && Number.isFinite(threshold) && Math.abs(threshold) >= 2 ** -960;

    let total = 0;
    let count = 0;
    if (top !== null) {
      // The candidates, in ascending id order as the pass over all logits would meet them.
      const ids = top.ids;
      for (let j = 0; j < n; j++) {
        const v = (values[j] as number) / T;
        if (plain ? (values[j] as number) >= kth : v >= threshold) {
          const i = ids[j] as number;
          const p = Math.exp(v - max);
          probs[i] = p;
          total += p;
          kept[count++] = i;
        }
      }
    } else if (plain) {
      for (let i = 0; i < V; i++) {
        if ((values[i] as number) >= kth) {
          const p = Math.exp((values[i] as number) / T - max);
          probs[i] = p;
          total += p;
          kept[count++] = i;
        }
      }
    } else {
      for (let i = 0; i < V; i++) {
        const v = (values[i] as number) / T;
        if (v >= threshold) {
          const p = Math.exp(v - max);
          probs[i] = p;
          total += p;
          kept[count++] = i;
        }
      }
    }
    this.keptCount = count;

    if (settings.topP !== undefined && settings.topP < 1) total = this.nucleus(total, settings.topP);
    this.lastTotal = total;

    // Inverse transform over token ids in ascending order, as torch.multinomial walks the CDF
    // (the kept ids are in ascending order; the others have probability 0).
    const target = u * total;
    let cumulative = 0;
    let lastKept = 0;
    for (let j = 0; j < count; j++) {
      const i = kept[j] as number;
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

  /**
   * The k-th largest of values[0..V) (ties counted: the value a sorted copy would hold at k - 1),
   * with a min-heap of the k largest seen: one comparison for most values, since few beat the
   * heap's least once it holds k of them. The largest value, found on the way, is left in
   * this.largest.
   */
  private kthLargest(values: Float32Array, V: number, k: number): number {
    const heap = this.scratch;
    let largest = -Infinity;
    for (let i = 0; i < k; i++) {
      const v = values[i] as number;
      heap[i] = v;
      if (v > largest) largest = v;
    }
    for (let i = (k >>> 1) - 1; i >= 0; i--) siftDown(heap, i, k);
    let least = heap[0] as number;
    for (let i = k; i < V; i++) {
      const v = values[i] as number;
      if (v > least) {
        if (v > largest) largest = v;
        heap[0] = v;
        siftDown(heap, 0, k);
        least = heap[0] as number;
      }
    }
    this.largest = largest;
    return least;
  }

  /**
   * Zeroes the tail of the distribution: keeps the most likely tokens until their mass reaches
   * topP of the total (at least one token; ties broken by the lower id). Returns the kept mass.
   */
  private nucleus(total: number, topP: number): number {
    const probs = this.probs;
    let n = 0;
    // The kept ids, ascending: the only ones with a probability.
    for (let j = 0; j < this.keptCount; j++) {
      const i = this.kept[j] as number;
      if ((probs[i] as number) > 0) this.order[n++] = i;
    }
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

/** Restores the min-heap property below heap[i] (heap[0..n) a binary min-heap elsewhere). */
function siftDown(heap: Float64Array, i: number, n: number): void {
  const x = heap[i] as number;
  for (;;) {
    let child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && (heap[child + 1] as number) < (heap[child] as number)) child++;
    if ((heap[child] as number) >= x) break;
    heap[i] = heap[child] as number;
    i = child;
  }
  heap[i] = x;
}
