/**
 * The autoregressive loop, as nanoGPT's GPT.generate: crop the context to the last blockSize
 * tokens, run the forward pass, sample from the last position's logits, append, repeat.
 *
 * With a KV cache, each new token costs one decode step while the sequence fits in blockSize.
 * Positions are absolute within the cropped window, so once the window slides every cached key
 * and value is stale. What happens then is the context policy: 'slide' (the default) re-runs the
 * whole window at each step (a fresh prefill), which is exactly nanoGPT's computation; 'shift'
 * keeps the last `keep` tokens, prefills them at positions 0..keep-1 into the same session, and
 * decodes from the cache until the window is full again (llama.cpp's context shift, re-prefilled
 * because learned absolute position embeddings cannot be rotated in place as RoPE keys can).
 */
import { randomInt } from 'node:crypto';
import type { ModelRuntime, TopKRequest } from './backends/types.js';
import { describe } from './config.js';
import { checkSignal, invalidArgument, optionsObject } from './errors.js';
import { Rng } from './sampling/rng.js';
import { Sampler, type SamplerSettings } from './sampling/sample.js';
import type { CharTokenizer } from './tokenizer.js';

export const GENERATION_LIMITS = {
  maxNewTokens: 1_000_000,
  /** Characters (UTF-16 code units) in a prompt. Only the last blockSize tokens are used. */
  promptLength: 1_048_576,
  numSamples: 1024,
  stopStrings: 16,
  stopStringLength: 1024,
  temperature: 100,
} as const;

/** nanoGPT's sample.py defaults. */
export const GENERATION_DEFAULTS = { maxNewTokens: 500, temperature: 0.8, topK: 200 } as const;

export interface GenerateOptions {
  /** Tokens to generate (default 500). */
  maxNewTokens?: number;
  /** 0 is greedy (argmax); default 0.8. */
  temperature?: number;
  /** Keep the k most likely tokens, and those tied with the k-th (default 200; null keeps all). */
  topK?: number | null;
  /** Nucleus sampling: keep the smallest set of likely tokens with this much probability (0 < topP <= 1). */
  topP?: number;
  /** Seed of the random generator (see Rng); default: a random seed. Same seed, same text. */
  seed?: number;
  /** Stop before the first occurrence of any of these strings; it is not part of the result. */
  stop?: string | readonly string[];
  /** Aborts generation: the promise rejects (the iterator throws) with the signal's reason. */
  signal?: AbortSignal;
  /** A prompt character outside the vocabulary: 'error' (default) or 'drop' it. */
  unknownCharacters?: 'error' | 'drop';
  /**
   * When the window of blockSize tokens is full: 'slide' (default) re-runs the last blockSize
   * tokens for every new token, exactly as nanoGPT; 'shift' keeps the last `keep` tokens and
   * decodes from the cache until the window is full again (one keep-token prefill per
   * blockSize - keep tokens, each token seeing keep to blockSize tokens of context).
   */
  context?: ContextPolicy;
  /** Tokens 'shift' keeps, 1 to blockSize - 1; default floor(blockSize / 2). */
  keep?: number;
}

export type ContextPolicy = 'slide' | 'shift';

export interface GenerateManyOptions extends GenerateOptions {
  /** Independent samples from the same prompt (default 1); sample i uses the seed's stream i. */
  numSamples?: number;
}

export type FinishReason = 'length' | 'stop';

export interface GenerationResult {
  /** The continuation, without the prompt and without the stop string. */
  readonly text: string;
  /** Tokens generated, the stop string's included. */
  readonly tokens: number;
  readonly finishReason: FinishReason;
}

/** Options checked and filled in; what the loop runs on. */
export interface GenerationPlan {
  readonly maxNewTokens: number;
  readonly sampler: SamplerSettings;
  readonly seed: number;
  readonly stop: readonly string[];
  readonly signal: AbortSignal | undefined;
  readonly unknownCharacters: 'error' | 'drop';
  readonly numSamples: number;
  readonly context: ContextPolicy;
  /** Tokens kept at a shift ('shift' only; floor(blockSize / 2) under 'slide', unused). */
  readonly keep: number;
}

export function planGeneration(options: GenerateManyOptions | undefined, vocabSize: number, blockSize: number): GenerationPlan {
  const o = optionsObject(options, 'generation options');
  const maxNewTokens = integerOption('maxNewTokens', o.maxNewTokens, GENERATION_DEFAULTS.maxNewTokens, 0, GENERATION_LIMITS.maxNewTokens);
  const temperature = o.temperature ?? GENERATION_DEFAULTS.temperature;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0 || temperature > GENERATION_LIMITS.temperature) {
    throw invalidArgument(
      `temperature must be a number from 0 (greedy) to ${GENERATION_LIMITS.temperature}, got ${describe(temperature)}`,
    );
  }
  let topK: number | undefined;
  if (o.topK !== null) {
    topK = integerOption('topK', o.topK, GENERATION_DEFAULTS.topK, 1, Number.MAX_SAFE_INTEGER);
    if (topK >= vocabSize) topK = undefined; // nanoGPT: min(top_k, vocab_size), i.e. keep all
  }
  let topP: number | undefined;
  if (o.topP !== undefined) {
    if (typeof o.topP !== 'number' || !(o.topP > 0 && o.topP <= 1)) {
      throw invalidArgument(`topP must be a number in (0, 1], got ${describe(o.topP)}`);
    }
    if (o.topP < 1) topP = o.topP;
  }
  const seed = o.seed === undefined ? randomInt(0, 2 ** 48 - 1) : integerOption('seed', o.seed, 0, 0, Number.MAX_SAFE_INTEGER);
  const stop = stopStrings(o.stop);
  checkSignal(o.signal);
  const unknownCharacters = o.unknownCharacters ?? 'error';
  if (unknownCharacters !== 'error' && unknownCharacters !== 'drop') {
    throw invalidArgument(`unknownCharacters must be 'error' or 'drop', got ${describe(unknownCharacters)}`);
  }
  const numSamples = integerOption('numSamples', o.numSamples, 1, 1, GENERATION_LIMITS.numSamples);
  const context = o.context ?? 'slide';
  if (context !== 'slide' && context !== 'shift') {
    throw invalidArgument(`context must be 'slide' or 'shift', got ${describe(context)}`);
  }
  if (o.keep !== undefined && context !== 'shift') {
    throw invalidArgument(`keep is the number of tokens context 'shift' keeps; add context: 'shift' or leave keep out`);
  }
  if (context === 'shift' && blockSize < 2) {
    throw invalidArgument(`context 'shift' needs a blockSize of at least 2 (this model's is ${blockSize}); use context 'slide'`);
  }
  const keep = integerOption('keep', o.keep, Math.floor(blockSize / 2), 1, blockSize - 1);
  return {
    maxNewTokens,
    sampler: { temperature, topK, topP },
    seed,
    stop,
    signal: o.signal,
    unknownCharacters,
    numSamples,
    context,
    keep,
  };
}

/** Checks a prompt's type and size before it is encoded. */
export function checkPrompt(prompt: unknown): string {
  if (typeof prompt !== 'string') throw invalidArgument(`prompt must be a string, got ${typeof prompt}`);
  if (prompt.length === 0) {
    throw invalidArgument('prompt is empty: give at least one character to start from (nanoGPT starts from "\\n")');
  }
  if (prompt.length > GENERATION_LIMITS.promptLength) {
    throw invalidArgument(
      `prompt is ${prompt.length} characters long; the limit is ${GENERATION_LIMITS.promptLength} (only the last blockSize tokens are used anyway)`,
    );
  }
  return prompt;
}

function integerOption(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalidArgument(`${name} must be an integer from ${min} to ${max}, got ${describe(value)}`);
  }
  return value;
}

function stopStrings(stop: unknown): string[] {
  if (stop === undefined) return [];
  const list = typeof stop === 'string' ? [stop] : stop;
  if (!Array.isArray(list) || list.length > GENERATION_LIMITS.stopStrings) {
    throw invalidArgument(`stop must be a string or an array of at most ${GENERATION_LIMITS.stopStrings} strings`);
  }
  for (const s of list) {
    if (typeof s !== 'string' || s.length === 0 || s.length > GENERATION_LIMITS.stopStringLength) {
      throw invalidArgument(`each stop string must be a non-empty string of at most ${GENERATION_LIMITS.stopStringLength} characters`);
    }
  }
  return list as string[];
}

/**
 * One generated token as the loop saw it, for an observer (the server's logprobs and
 * distributions). Every field is valid only during the call: the loop reuses them.
 */
export interface TokenStep {
  /**
   * The step's raw logits over the vocabulary's characters (before any sampling transform); null
   * when the observer was given without wanting them (generateSample's observeLogits).
   */
  readonly logits: Float32Array | null;
  /** The token drawn. */
  readonly token: number;
  /** The sampler that drew it: drawnProbability(id) is id's probability in that draw. */
  readonly sampler: Sampler;
}

export type TokenObserver = (step: TokenStep) => void;

/**
 * Generates one sample, yielding the text as it becomes final. Text that could be the start of a
 * stop string is held back until it is known not to be one. Returns the whole result.
 */
export async function* generateSample(
  runtime: ModelRuntime,
  tokenizer: CharTokenizer,
  promptIds: readonly number[],
  plan: GenerationPlan,
  sampleIndex: number,
  observe?: TokenObserver,
  observeLogits = true,
): AsyncGenerator<string, GenerationResult, void> {
  const { blockSize, vocabSize } = runtime.config;
  // A model may have more token ids than characters (nanoGPT pads vocab sizes): never sample those.
  const usable = tokenizer.size;
  const signal = plan.signal;
  signal?.throwIfAborted();
  const stopper = new StopMatcher(plan.stop);
  if (plan.maxNewTokens === 0) return { text: '', tokens: 0, finishReason: 'length' };

  const rng = new Rng(plan.seed, sampleIndex);
  const sampler = new Sampler(usable);
  // The window the model sees: the last blockSize tokens of prompt + continuation.
  const window = new Int32Array(blockSize);
  let windowLength = Math.min(promptIds.length, blockSize);
  window.set(promptIds.slice(promptIds.length - windowLength));

  // Where nobody reads the whole logits, an engine that can may hand the sampler only its top-k
  // candidates (the CUDA engine: a large vocabulary's logits then stay on the device).
  const select = observe !== undefined && observeLogits ? undefined : topKRequest(plan.sampler, usable);
  const session = runtime.createSession();
  try {
    let logits = await session.prefill(window.subarray(0, windowLength), select);
    for (let n = 1; ; n++) {
      const u = plan.sampler.temperature === 0 ? 0 : rng.uniform();
      const step = !(logits instanceof Float32Array) || usable === vocabSize ? logits : logits.subarray(0, usable);
      const token = sampler.sample(step, plan.sampler, u);
      if (observe !== undefined) observe({ logits: step instanceof Float32Array ? step : null, token, sampler });
      const ready = stopper.push(tokenizer.token(token));
      if (ready.length > 0) yield ready;
      if (stopper.stopped) return { text: stopper.text, tokens: n, finishReason: 'stop' };
      if (n === plan.maxNewTokens) break;

      // An engine computing on this thread would starve timers and I/O: give them a turn.
      if (runtime.computesOnMainThread) await new Promise<void>((resolve) => setImmediate(resolve));
      signal?.throwIfAborted();

      if (windowLength < blockSize) {
        window[windowLength++] = token;
        logits = await session.decode(token, select);
      } else if (plan.context === 'shift') {
        // The last `keep` tokens, the new one included, move to positions 0..keep-1.
        window.copyWithin(0, blockSize - plan.keep + 1);
        window[plan.keep - 1] = token;
        windowLength = plan.keep;
        session.reset();
        logits = await session.prefill(window.subarray(0, windowLength), select);
      } else {
        window.copyWithin(0, 1);
        window[blockSize - 1] = token;
        session.reset();
        logits = await session.prefill(window, select);
      }
    }
  } finally {
    session.dispose();
  }
  const rest = stopper.flush();
  if (rest.length > 0) yield rest;
  return { text: stopper.text, tokens: plan.maxNewTokens, finishReason: 'length' };
}

/**
 * Vocabularies from this size ask the engine for top-k candidates. Below it the host walks all
 * the logits in a few microseconds, about what a selection adds to a step on the device; a
 * GPT-2 vocabulary (50,257) takes the host 0.1-0.4 ms a token (docs/performance.md).
 */
export const SELECT_FROM_VOCABULARY = 1024;

/**
 * What generation asks an engine for instead of the logits, when anything (see
 * SELECT_FROM_VOCABULARY). Never below a temperature of 2^-800: there a float32 logit over the
 * temperature can overflow a double, and the sampler's comparisons of quotients (not of logits)
 * could keep more than the candidates.
 */
export function topKRequest(sampler: SamplerSettings, usable: number): TopKRequest | undefined {
  if (usable < SELECT_FROM_VOCABULARY) return undefined;
  if (sampler.temperature > 0 && sampler.temperature < 2 ** -800) return undefined;
  if (sampler.temperature === 0) return { topK: 1, limit: usable }; // the argmax, and its ties
  if (sampler.topK !== undefined && sampler.topK < usable) return { topK: sampler.topK, limit: usable };
  return undefined; // every token stays possible: the sampler needs all the logits
}

/** Finds stop strings in a growing text and says how much of the text is safe to emit. */
export class StopMatcher {
  private buffer = '';
  private emitted = 0;
  private end = -1;
  private readonly longest: number;

  constructor(private readonly stops: readonly string[]) {
    this.longest = stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  get stopped(): boolean {
    return this.end >= 0;
  }

  /** The final text so far (up to the stop string, once one was found). */
  get text(): string {
    return this.end >= 0 ? this.buffer.slice(0, this.end) : this.buffer;
  }

  /** Adds generated text and returns the part that is now final. */
  push(piece: string): string {
    if (this.end >= 0) return '';
    this.buffer += piece;
    if (this.stops.length === 0) return this.take(this.buffer.length);
    const from = Math.max(0, this.buffer.length - piece.length - this.longest + 1);
    let first = -1;
    for (const s of this.stops) {
      const at = this.buffer.indexOf(s, from);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    if (first >= 0) {
      this.end = first;
      return this.take(first);
    }
    return this.take(this.buffer.length - this.heldBack());
  }

  /** The rest of the text, at the end of generation. */
  flush(): string {
    return this.end >= 0 ? '' : this.take(this.buffer.length);
  }

  /** Length of the longest suffix of the buffer that begins some stop string. */
  private heldBack(): number {
    const max = Math.min(this.longest - 1, this.buffer.length - this.emitted);
    for (let n = max; n > 0; n--) {
      const tail = this.buffer.slice(this.buffer.length - n);
      if (this.stops.some((s) => s.startsWith(tail))) return n;
    }
    return 0;
  }

  private take(upTo: number): string {
    if (upTo <= this.emitted) return '';
    const out = this.buffer.slice(this.emitted, upTo);
    this.emitted = upTo;
    return out;
  }
}
