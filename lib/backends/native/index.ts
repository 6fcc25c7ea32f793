/**
 * The native engine: C++ kernels (AVX-512, AVX2, NEON or scalar, picked at run time) on a thread
 * pool, every forward pass off the main thread. This file adapts the raw addon (binding.ts) to
 * the engine interface of types.ts and turns its errors into MicroGPTErrors. The CUDA engine
 * (../cuda.ts) is the same addon model with a device: its runtime and sessions are these.
 */
import { availableParallelism } from 'node:os';
import { isAbsolute, relative, sep } from 'node:path';
import type { ModelConfig } from '../../config.js';
import { MicroGPTError, beyondFloat16, type MicroGPTErrorCode } from '../../errors.js';
import { matricesBeyondFloat16, namedTensors, type ModelWeights } from '../../weights.js';
import type { Backend, BackendName, InferenceSession, ModelRuntime, Precision, RuntimeOptions, TopKRequest, TopLogits } from '../types.js';
import { forcedIsa, loadAddon, packageRoot, type AddonBatchStats, type AddonIsa, type AddonModel, type AddonSession, type AddonTensor } from './binding.js';

export interface NativeRuntimeOptions extends RuntimeOptions {
  /** Forces an instruction set (tests, benchmarks); default MICROGPT_ISA, else the fastest. */
  readonly isa?: AddonIsa;
}

/** Why the native engine cannot run in this process, or null when it can. */
export function nativeUnavailableReason(): string | null {
  return loadAddon().reason;
}

/** The native binary of this process, as `microgpt info` reports it. */
export interface NativeBinary {
  /**
   * The file node-gyp-build picked, relative to the package when inside it ('/'-separated):
   * build/Release/microgpt.node, or prebuilds/<platform>-<arch>/microgpt[.<libc>].node; absolute
   * elsewhere (MICROGPT_PREBUILD); null when there is none.
   */
  readonly path: string | null;
  /** The instruction set its kernels run (MICROGPT_ISA's, else the fastest); null when it is unusable. */
  readonly isa: AddonIsa | null;
  /** Every instruction set it runs on this CPU; empty when it is unusable. */
  readonly supported: AddonIsa[];
}

export function nativeBinary(): NativeBinary {
  const { addon, path } = loadAddon();
  let shown: string | null = null;
  if (path !== null) {
    const inside = relative(packageRoot(), path);
    shown = inside === '..' || inside.startsWith(`..${sep}`) || isAbsolute(inside) ? path : inside.split(sep).join('/');
  }
  if (addon === null) return { path: shown, isa: null, supported: [] };
  const cpu = addon.cpu();
  return { path: shown, isa: forcedIsa() ?? cpu.best, supported: cpu.supported };
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
    const precision = options.precision ?? 'auto';
    if (precision === 'f16' && matricesBeyondFloat16(weights)) throw beyondFloat16();
    let model: AddonModel;
    try {
      model = new addon.Model(config, isa === undefined ? { threads, precision } : { threads, isa, precision });
      await model.load(addonTensors(config, weights));
    } catch (error) {
      translate(error);
    }
    return new NativeRuntime('native', config, model);
  },
};

/**
 * The weights as the addon's load() takes them: every tensor of tensorLayout (lib/weights.ts) in
 * its order, with its name and shape, which the addon checks against its own table.
 */
export function addonTensors(config: ModelConfig, weights: ModelWeights): AddonTensor[] {
  return [...namedTensors(config, weights)].map(([name, t]) => ({ name, shape: t.shape, data: t.data }));
}

/** The codes of the addon's errors that a user can cause (binding.ts, Addon). */
const ADDON_ERROR_CODES: readonly MicroGPTErrorCode[] = ['ERR_DISPOSED', 'ERR_INVALID_ARGUMENT', 'ERR_INVALID_CONFIG', 'ERR_BACKEND_UNAVAILABLE'];

/** Rethrows the addon's coded errors as MicroGPTErrors; others as they are. */
export function translate(error: unknown): never {
  const code = error instanceof Error ? (error as { code?: unknown }).code : undefined;
  if (error instanceof Error && ADDON_ERROR_CODES.includes(code as MicroGPTErrorCode)) {
    throw new MicroGPTError(code as MicroGPTErrorCode, error.message);
  }
  throw error;
}

/** A session's prefill or decode (an append of ids) waiting for the runtime's next flush. */
interface QueuedCall {
  readonly session: AddonSession;
  readonly ids: Int32Array;
  readonly select: TopKRequest | undefined;
  readonly resolve: (logits: Float32Array | TopLogits) => void;
  readonly reject: (error: unknown) => void;
}

/** The engines that run in the addon: the CPU's, and the CUDA engine's (a model with a device). */
export type AddonBackendName = Extract<BackendName, 'native' | 'cuda'>;

/**
 * A model of the addon, on the CPU ('native') or a CUDA device ('cuda'): the same runtime, its
 * passes run on the model's engine thread either way.
 *
 * Sessions' calls are not handed to the addon one by one: they are collected and handed over as
 * one group (`appendMany`) at the next turn of the event loop (setImmediate). Generation loops
 * in flight together (generateMany, concurrent generate calls) issue their next step in the same
 * turn, so the engine gets them at once and runs them as one batched pass, instead of starting
 * the first alone while the others arrive. A group is settled together, so the loops stay in
 * step. Texts do not depend on the grouping: a batched row is computed exactly as an unbatched one.
 */
export class NativeRuntime implements ModelRuntime {
  readonly computesOnMainThread = false;
  private model: AddonModel | null;
  private queued: QueuedCall[] = [];
  private flushScheduled = false;
  private sessionsOpen = 0;

  constructor(
    readonly backend: AddonBackendName,
    readonly config: ModelConfig,
    model: AddonModel,
  ) {
    this.model = model;
  }

  /** The CUDA device the model runs on, or null on the CPU. */
  get device(): number | null {
    return this.live().device;
  }

  /** The instruction set the kernels run on. */
  get isa(): AddonIsa {
    return this.live().isa;
  }

  /** Compute threads, the calling thread included. */
  get threads(): number {
    return this.live().threads;
  }

  get precision(): Precision {
    return this.live().precision as Precision;
  }

  async forward(ids: Int32Array): Promise<Float32Array> {
    return this.live().forward(ids).catch(translate);
  }

  createSession(): InferenceSession {
    const session = new NativeSession(this.live().createSession(), this);
    this.sessionsOpen++;
    return session;
  }

  /** Sessions created and not yet disposed: a finished or aborted generation leaves none. */
  get liveSessions(): number {
    return this.sessionsOpen;
  }

  /** @internal NativeSession.dispose's count. */
  sessionClosed(): void {
    this.sessionsOpen--;
  }

  dispose(): void {
    this.flush(); // calls made before dispose still run, as passes already running do
    this.model?.dispose();
    this.model = null;
  }

  /** Whether dispose() was called. */
  get disposed(): boolean {
    return this.model === null;
  }

  /** What the engine's batching has done so far (tests and diagnostics). */
  get batchStats(): AddonBatchStats {
    return this.live().stats();
  }

  /** Queues `session.append(ids, select)` for the next flush; `ids` must not change afterwards. */
  submit(session: AddonSession, ids: Int32Array, select: TopKRequest | undefined): Promise<Float32Array | TopLogits> {
    this.live();
    return new Promise<Float32Array | TopLogits>((resolve, reject) => {
      this.queued.push({ session, ids, select, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Hands every queued call to the addon as one group. */
  flush(): void {
    this.flushScheduled = false;
    const calls = this.queued;
    if (calls.length === 0) return;
    this.queued = [];
    let promises: Promise<Float32Array | TopLogits>[];
    try {
      const sessions = calls.map((c) => c.session);
      const ids = calls.map((c) => c.ids);
      // Only the CUDA engine gives candidates: the CPU's sessions need no array of ids for them.
      promises = this.backend === 'cuda' ? this.live().appendMany(sessions, ids, calls.map((c) => c.select)) : this.live().appendMany(sessions, ids);
    } catch (error) {
      for (const c of calls) c.reject(error);
      return;
    }
    calls.forEach((c, i) => {
      (promises[i] as Promise<Float32Array | TopLogits>).then(c.resolve, (error: unknown) => {
        try {
          translate(error);
        } catch (translated) {
          c.reject(translated);
        }
      });
    });
  }

  private live(): AddonModel {
    if (this.model === null) throw new MicroGPTError('ERR_DISPOSED', 'the model has been disposed');
    return this.model;
  }
}

class NativeSession implements InferenceSession {
  private session: AddonSession | null;
  /** Calls queued in the runtime or running in the addon. */
  private inFlight = 0;

  constructor(
    session: AddonSession,
    private readonly runtime: NativeRuntime,
  ) {
    this.session = session;
  }

  get length(): number {
    return this.session?.length ?? 0;
  }

  prefill(ids: Int32Array): Promise<Float32Array>;
  prefill(ids: Int32Array, select: TopKRequest | undefined): Promise<Float32Array | TopLogits>;
  async prefill(ids: Int32Array, select?: TopKRequest): Promise<Float32Array | TopLogits> {
    // A copy: the call runs at the next flush, and the caller may reuse its array before then.
    return this.submit(ids.slice(), select);
  }

  decode(id: number): Promise<Float32Array>;
  decode(id: number, select: TopKRequest | undefined): Promise<Float32Array | TopLogits>;
  async decode(id: number, select?: TopKRequest): Promise<Float32Array | TopLogits> {
    return this.submit(Int32Array.of(id), select);
  }

  reset(): void {
    const session = this.live();
    // The addon cannot see a call still queued here; refuse as it refuses a running one.
    if (this.inFlight > 0) throw new Error('cannot reset a session while its prefill is running');
    session.reset();
  }

  dispose(): void {
    if (this.session === null) return;
    if (this.inFlight > 0 && !this.runtime.disposed) this.runtime.flush();
    this.session.dispose();
    this.session = null;
    this.runtime.sessionClosed();
  }

  private async submit(ids: Int32Array, select: TopKRequest | undefined): Promise<Float32Array | TopLogits> {
    const session = this.live();
    this.inFlight++;
    try {
      return await this.runtime.submit(session, ids, select);
    } finally {
      this.inFlight--;
    }
  }

  private live(): AddonSession {
    if (this.session === null) throw new MicroGPTError('ERR_DISPOSED', 'the session has been disposed');
    if (this.runtime.disposed) throw new MicroGPTError('ERR_DISPOSED', 'the model has been disposed');
    return this.session;
  }
}
