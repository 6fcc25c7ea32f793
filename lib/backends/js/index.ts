import type { ModelConfig } from '../../config.js';
import { MicroGPTError, beyondFloat16 } from '../../errors.js';
import { matricesBeyondFloat16, matricesFloat16Exact, roundMatricesToFloat16, type ModelWeights } from '../../weights.js';
import type { Backend, InferenceSession, ModelRuntime, Precision, RuntimeOptions } from '../types.js';
import { createKVCache, forwardTokens, type KVCache } from './forward.js';

/**
 * The pure-TypeScript engine: the readable reference, the fallback where no native binary loads,
 * and the yardstick of the native-versus-JS benchmark. It computes on the calling thread; the
 * generation loop yields to the event loop between tokens.
 */
export const jsBackend: Backend = {
  name: 'js',
  async load(config: ModelConfig, weights: ModelWeights, options: RuntimeOptions = {}): Promise<ModelRuntime> {
    // This engine keeps float32 arrays: 'f16' computes with the weights rounded, exactly as the
    // native engine does. 'auto' keeps them as they are, and says 'f16' where they are float16
    // values already (as the native engine would keep them), so Model.precision does not depend
    // on the engine.
    if (options.precision === 'f32') return new JsRuntime(config, weights, 'f32');
    if ((options.precision ?? 'auto') === 'auto') return new JsRuntime(config, weights, matricesFloat16Exact(weights) ? 'f16' : 'f32');
    if (matricesBeyondFloat16(weights)) throw beyondFloat16();
    return new JsRuntime(config, roundMatricesToFloat16(weights), 'f16');
  },
};

class JsRuntime implements ModelRuntime {
  readonly backend = 'js' as const;
  readonly computesOnMainThread = true;
  private weights: ModelWeights | null;

  constructor(
    readonly config: ModelConfig,
    weights: ModelWeights,
    readonly precision: Precision,
  ) {
    this.weights = weights;
  }

  async forward(ids: Int32Array): Promise<Float32Array> {
    return forwardTokens(this.config, this.live(), createKVCache(this.config), ids, true);
  }

  createSession(): InferenceSession {
    this.live();
    return new JsSession(this);
  }

  dispose(): void {
    this.weights = null;
  }

  /** The weights, or an error if the model was disposed. */
  live(): ModelWeights {
    if (this.weights === null) throw new MicroGPTError('ERR_DISPOSED', 'the model has been disposed');
    return this.weights;
  }
}

class JsSession implements InferenceSession {
  private cache: KVCache | null;

  constructor(private readonly runtime: JsRuntime) {
    this.cache = createKVCache(runtime.config);
  }

  get length(): number {
    return this.cache?.length ?? 0;
  }

  async prefill(ids: Int32Array): Promise<Float32Array> {
    const cache = this.liveCache();
    if (ids.length === 0 || cache.length + ids.length > this.runtime.config.blockSize) {
      throw new RangeError(`prefill of ${ids.length} tokens after ${cache.length} exceeds blockSize`);
    }
    return forwardTokens(this.runtime.config, this.runtime.live(), cache, ids, false);
  }

  async decode(id: number): Promise<Float32Array> {
    return this.prefill(Int32Array.of(id));
  }

  reset(): void {
    this.liveCache().length = 0;
  }

  dispose(): void {
    this.cache = null;
  }

  private liveCache(): KVCache {
    if (this.cache === null) throw new MicroGPTError('ERR_DISPOSED', 'the session has been disposed');
    return this.cache;
  }
}

