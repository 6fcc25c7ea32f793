/**
 * The seam between the TypeScript layer (tokenizer, cropping, sampling) and the engines that run
 * the forward pass. The `js` backend is the readable reference; `native` (C++ SIMD) and `cuda`
 * implement the same interface. Everything here takes token ids that the caller has validated
 * (integers in [0, vocabSize), at most blockSize of them in a session), so an engine may trust them.
 */
import type { ModelConfig } from '../config.js';
import type { ModelWeights } from '../weights.js';

export type BackendName = 'js' | 'native' | 'cuda';
export type BackendChoice = 'auto' | BackendName;

/**
 * How an engine keeps the model's matrices (wte, the tied lm_head, every Linear weight); the
 * position embedding, LayerNorms and biases stay float32, and all arithmetic is float32.
 * 'f16' rounds them to IEEE float16: half the bytes a decode step reads, logits that move by
 * about 1e-3. 'auto' is 'f16' where that changes no weight (a float16 checkpoint, like the
 * bundled model: the same logits, bit for bit) and 'f32' otherwise.
 */
export type Precision = 'f32' | 'f16';
export type PrecisionChoice = 'auto' | Precision;

/** The most compute threads a model may ask for: the native pool's own cap (a test holds them equal). */
export const MAX_THREADS = 256;

export interface RuntimeOptions {
  /** Worker threads for engines that use them; the js backend ignores it. */
  readonly threads?: number;
  /** Default 'auto'. */
  readonly precision?: PrecisionChoice;
  /** The CUDA device's index, for the cuda backend (default 0); the other engines ignore it. */
  readonly device?: number;
}

/** Creates runtimes: one per loaded model. */
export interface Backend {
  readonly name: BackendName;
  /** Copies or adopts the weights once; every session of the runtime shares them. */
  load(config: ModelConfig, weights: ModelWeights, options?: RuntimeOptions): Promise<ModelRuntime>;
}

/** A model's weights resident in an engine. */
export interface ModelRuntime {
  readonly backend: BackendName;
  readonly config: ModelConfig;
  /**
   * True when forward passes run on the calling (main) thread, so the generation loop must yield
   * to the event loop between tokens itself; an engine that settles its promises from another
   * thread already gives the event loop its turn at every await.
   */
  readonly computesOnMainThread: boolean;
  /** The precision the matrices are kept in ('auto' resolved). */
  readonly precision: Precision;
  /**
   * Logits of every position of `ids` (positions 0..T-1, T <= blockSize), row-major
   * [T, vocabSize], in a new array the caller owns.
   */
  forward(ids: Int32Array): Promise<Float32Array>;
  /** A new generation state with its own KV cache. */
  createSession(): InferenceSession;
  /** Frees the weights; sessions must not be used afterwards. */
  dispose(): void;
}

/**
 * What the sampler needs of a step's logits when it keeps the top k: the ids i < limit whose
 * logit is at or above the k-th largest of logits[0..limit) (ties with it included, as the sampler
 * keeps them). 0 < topK < limit <= vocabSize.
 */
export interface TopKRequest {
  readonly topK: number;
  readonly limit: number;
}

/** Those candidates: ids in ascending order, and their logits (exactly the logits' values). */
export interface TopLogits {
  readonly ids: Int32Array;
  readonly values: Float32Array;
}

/**
 * One sequence being generated: the keys and values of the tokens seen so far (absolute positions
 * 0..length-1). Calls on one session must not overlap; different sessions may run concurrently.
 */
export interface InferenceSession {
  /** Tokens in the KV cache. */
  readonly length: number;
  /**
   * Appends `ids` at positions length..length+n-1 (length + n <= blockSize, n >= 1) and returns the
   * logits of the last of them [vocabSize]. The array may be reused by the next call: copy to keep.
   * With `select`, an engine may return the top-k candidates instead (the CUDA engine does, so that
   * a large vocabulary's logits stay on the device); the others ignore it.
   */
  prefill(ids: Int32Array): Promise<Float32Array>;
  prefill(ids: Int32Array, select: TopKRequest | undefined): Promise<Float32Array | TopLogits>;
  /** prefill of a single token; engines may take a faster matrix-vector path here. */
  decode(id: number): Promise<Float32Array>;
  decode(id: number, select: TopKRequest | undefined): Promise<Float32Array | TopLogits>;
  /** Empties the KV cache (length becomes 0). */
  reset(): void;
  /** Frees the KV cache. */
  dispose(): void;
}
