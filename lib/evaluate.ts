/**
 * Cross-entropy of a model over a text, measured by our own forward pass, so a checkpoint's quality
 * (and the README's figure for the bundled model) can be checked with the product itself.
 */
import { describe } from './config.js';
import { checkSignal, invalidArgument, optionsObject } from './errors.js';
import { Model } from './model.js';

export interface EvaluateOptions {
  /**
   * 'all' (default) scores the whole text; 'val' only nanoGPT's validation split, the last 10% of
   * the characters (text[int(n * 0.9):], as shakespeare_char's prepare.py).
   */
  split?: 'all' | 'val';
  /** Also report the mean loss at each position of the window (lossByPosition). */
  byPosition?: boolean;
  signal?: AbortSignal;
  /** Called after each window with (windowsDone, windowsTotal). */
  onProgress?: (done: number, total: number) => void;
}

export interface Evaluation {
  /** Mean cross-entropy in nats per token. */
  readonly loss: number;
  /** exp(loss). */
  readonly perplexity: number;
  /** Tokens scored. */
  readonly tokens: number;
  /** Windows of blockSize tokens. */
  readonly windows: number;
  /**
   * With byPosition: blockSize entries; entry n - 1 is the mean loss of predicting a window's token
   * n + 1 from its first n tokens (a context of n), over all windows. Their mean is `loss`.
   */
  readonly lossByPosition?: number[];
}

/** The most characters `evaluate` reads: 256 Mi, well above any corpus a char model trains on. */
export const MAX_EVAL_CHARACTERS = 256 * 1024 * 1024;

/**
 * Mean cross-entropy over non-overlapping windows: with token ids v (length L) and block size B,
 * window i (0 <= i < floor((L - 1) / B)) predicts v[iB+1 .. iB+B] from v[iB .. iB+B-1]. The tail
 * shorter than a window is not scored. Characters outside the vocabulary are an error.
 * Position t of a window predicts from a context of t + 1 tokens, so byPosition gives the loss
 * as a function of the context length: what a context policy that keeps fewer tokens costs.
 */
export async function evaluate(model: Model, text: string, options?: EvaluateOptions): Promise<Evaluation> {
  if (!(model instanceof Model)) throw invalidArgument('model must be a Model (from loadModel or createModel)');
  const { split = 'all', byPosition = false, signal, onProgress } = optionsObject(options, 'evaluate options');
  if (typeof byPosition !== 'boolean') throw invalidArgument(`byPosition must be true or false, got ${describe(byPosition)}`);
  checkSignal(signal);
  if (onProgress !== undefined && typeof onProgress !== 'function') throw invalidArgument('onProgress must be a function');
  if (typeof text !== 'string') throw invalidArgument(`text must be a string, got ${typeof text}`);
  if (text.length > MAX_EVAL_CHARACTERS) throw invalidArgument(`text has ${text.length} characters; evaluate reads at most ${MAX_EVAL_CHARACTERS}`);
  if (split !== 'all' && split !== 'val') throw invalidArgument(`split must be 'all' or 'val', got ${describe(split)}`);
  let scored = text;
  if (split === 'val') {
    const chars = [...text]; // Python indexes code points
    scored = chars.slice(Math.floor(chars.length * 0.9)).join('');
  }
  const ids = model.encode(scored);
  const B = model.config.blockSize;
  const V = model.config.vocabSize;
  const windows = Math.floor((ids.length - 1) / B);
  if (windows < 1) {
    throw invalidArgument(`the text has ${ids.length} tokens; evaluating needs at least blockSize + 1 (${B + 1})`);
  }
  let total = 0;
  const byT = new Float64Array(B);
  for (let w = 0; w < windows; w++) {
    signal?.throwIfAborted();
    const logits = await model.logits(ids.slice(w * B, w * B + B));
    for (let t = 0; t < B; t++) {
      const row = logits.subarray(t * V, t * V + V);
      let max = -Infinity;
      for (let i = 0; i < V; i++) if ((row[i] as number) > max) max = row[i] as number;
      let sum = 0;
      for (let i = 0; i < V; i++) sum += Math.exp((row[i] as number) - max);
      const target = ids[w * B + t + 1] as number;
      const loss = Math.log(sum) + max - (row[target] as number); // -log softmax(row)[target]
      total += loss;
      byT[t] = (byT[t] as number) + loss;
    }
    onProgress?.(w + 1, windows);
    if (w % 8 === 7) await new Promise<void>((resolve) => setImmediate(resolve));
  }
  const tokens = windows * B;
  const loss = total / tokens;
  const result = { loss, perplexity: Math.exp(loss), tokens, windows };
  return byPosition ? { ...result, lossByPosition: Array.from(byT, (sum) => sum / windows) } : result;
}

/** What each context policy sees on average past the window, read off lossByPosition. */
export interface ContextPolicyLosses {
  /** 'slide' predicts every token from blockSize tokens: the curve's last entry. */
  readonly slide: number;
  /** 'shift' predicts from keep, keep + 1, ..., blockSize tokens, each equally often: their mean. */
  readonly shift: { readonly keep: number; readonly loss: number };
}

export function contextPolicyLosses(lossByPosition: readonly number[], keep: number): ContextPolicyLosses {
  const B = lossByPosition.length;
  if (!Number.isInteger(keep) || keep < 1 || keep > B - 1) throw invalidArgument(`keep must be an integer from 1 to ${B - 1}, got ${describe(keep)}`);
  const kept = lossByPosition.slice(keep - 1);
  return { slide: lossByPosition[B - 1] as number, shift: { keep, loss: kept.reduce((a, b) => a + b, 0) / kept.length } };
}
