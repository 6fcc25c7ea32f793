/**
 * The native engine: C++ kernels (AVX-512, AVX2, NEON or scalar, picked at run time) on a thread
 * pool, every forward pass off the main thread. This file adapts the raw addon (binding.ts) to
 * the engine interface of types.ts and turns its errors into MicroGPTErrors.
 */
import { availableParallelism } from 'node:os';
import type { ModelConfig } from '../../config.js';
import { MicroGPTError } from '../../errors.js';
import type { ModelWeights } from '../../weights.js';
import type { Backend, InferenceSession, ModelRuntime, RuntimeOptions } from '../types.js';
import { forcedIsa, loadAddon, type AddonIsa, type AddonModel, type AddonSession } from './binding.js';

export interface NativeRuntimeOptions extends RuntimeOptions {
  /** Forces an instruction set (tests, benchmarks); default MICROGPT_ISA, else the fastest. */
  readonly isa?: AddonIsa;
}

/** Why the native engine cannot run in this process, or null when it can. */
export function nativeUnavailableReason(): string | null {
  return loadAddon().reason;
}

export const nativeBackend: Backend & {
  load(config: ModelConfig, weights: ModelWeights, options?: NativeRuntimeOptions): Promise<NativeRuntime>;
} = {
  name: 'native',
  async load(config: ModelConfig, weights: ModelWeights, options: NativeRuntimeOptions = {}): Promise<NativeRuntime> {
    const { addon, reason } = loadAddon();
    if (addon === null) {
      throw new MicroGPTError('ERR_BACKEND_UNAVAILABLE', `backend 'native' is not available: ${reason}; use backend 'js' or 'auto'`);
    }
    const isa = options.isa ?? forcedIsa();
    const threads = options.threads ?? availableParallelism();
    const model = new addon.Model(config, isa === undefined ? { threads } : { threads, isa });
    await model.load(binderOrder(weights));
    return new NativeRuntime(config, model);
  },
};

/** The tensors in the order native/model.h's TensorIndex expects. */
function binderOrder(w: ModelWeights): (Float32Array | null)[] {
  const out: (Float32Array | null)[] = [w.wte, w.wpe, w.lnfWeight, w.lnfBias];
  for (const l of w.layers) {
    out.push(l.ln1Weight, l.ln1Bias, l.attnWeight, l.attnBias, l.attnProjWeight, l.attnProjBias);
    out.push(l.ln2Weight, l.ln2Bias, l.mlpFcWeight, l.mlpFcBias, l.mlpProjWeight, l.mlpProjBias);
  }
  return out;
}

/** Rethrows the addon's "disposed" errors as MicroGPTErrors; others as they are. */
function translate(error: unknown): never {
  if (error instanceof Error && (error as { code?: unknown }).code === 'ERR_DISPOSED') {
    throw new MicroGPTError('ERR_DISPOSED', error.message);
  }
  throw error;
}

export class NativeRuntime implements ModelRuntime {
  readonly backend = 'native' as const;
  private model: AddonModel | null;

  constructor(
    readonly config: ModelConfig,
    model: AddonModel,
  ) {
    this.model = model;
  }

  /** The instruction set the kernels run on. */
  get isa(): AddonIsa {
    return this.live().isa;
  }

  /** Compute threads, the calling thread included. */
  get threads(): number {
    return this.live().threads;
  }

  async forward(ids: Int32Array): Promise<Float32Array> {
    return this.live().forward(ids).catch(translate);
  }

  createSession(): InferenceSession {
    return new NativeSession(this.live().createSession(), this);
  }

  dispose(): void {
    this.model?.dispose();
    this.model = null;
  }

  /** Whether dispose() was called. */
  get disposed(): boolean {
    return this.model === null;
  }

  private live(): AddonModel {
    if (this.model === null) throw new MicroGPTError('ERR_DISPOSED', 'the model has been disposed');
    return this.model;
  }
}

class NativeSession implements InferenceSession {
  private session: AddonSession | null;
  private readonly one = new Int32Array(1);

  constructor(
    session: AddonSession,
    private readonly runtime: NativeRuntime,
  ) {
    this.session = session;
  }

  get length(): number {
    return this.session?.length ?? 0;
  }

  async prefill(ids: Int32Array): Promise<Float32Array> {
    return this.live().prefill(ids).catch(translate);
  }

  async decode(id: number): Promise<Float32Array> {
    const session = this.live();
    // The addon copies the ids before returning, so one array serves every call.
    this.one[0] = id;
    return session.prefill(this.one).catch(translate);
  }

  reset(): void {
    this.live().reset();
  }

  dispose(): void {
    this.session?.dispose();
    this.session = null;
  }

  private live(): AddonSession {
    if (this.session === null) throw new MicroGPTError('ERR_DISPOSED', 'the session has been disposed');
    if (this.runtime.disposed) throw new MicroGPTError('ERR_DISPOSED', 'the model has been disposed');
    return this.session;
  }
}
