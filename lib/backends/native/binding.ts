/**
 * The raw native addon (build/Release/microgpt.node or prebuilds/<platform>-<arch>/), typed apart
 * from the public API: these are exactly the objects native/addon*.cpp makes, and nothing but
 * lib/backends/native/ should touch them. Loading goes through node-gyp-build from the package
 * root and, on failure, yields one actionable reason instead of throwing.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ModelConfig } from '../../config.js';
import type { TopKRequest, TopLogits } from '../types.js';

/** An instruction set the kernels are compiled for. */
export type AddonIsa = 'scalar' | 'avx2' | 'avx512' | 'neon';

/** The addon takes the model's config as the TypeScript layer has validated it. */
export type AddonConfig = ModelConfig;

export interface AddonModelOptions {
  /** Compute threads, the calling thread included (1 to Addon.maxThreads). */
  readonly threads: number;
  /** Forces an instruction set; by default the fastest this CPU runs. */
  readonly isa?: AddonIsa;
  /** How the matrices are kept (see PrecisionChoice); default 'f32'. */
  readonly precision?: 'f32' | 'f16' | 'auto';
  /**
   * A CUDA device's index: the CUDA engine runs the model there (the constructor throws
   * ERR_BACKEND_UNAVAILABLE when it cannot); without it, the CPU engine. Give `threads: 1`.
   */
  readonly device?: number;
}

/** One tensor handed to AddonModel.load. */
export interface AddonTensor {
  /** nanoGPT's state_dict key. */
  readonly name: string;
  /** PyTorch's layout: a Linear weight is [outFeatures, inFeatures]. */
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/** A tensor of the engine's layout table (native/config.h, tensor_layout). */
export interface AddonTensorSpec {
  readonly name: string;
  readonly shape: number[];
}

/** A model's weights in the engine; `load` must resolve before anything else is called. */
export interface AddonModel {
  readonly isa: AddonIsa;
  readonly threads: number;
  /** The CUDA device the model runs on, or null for the CPU engine. */
  readonly device: number | null;
  /** 'f32' or 'f16' once loaded ('auto' resolved). */
  readonly precision: 'f32' | 'f16' | 'auto';
  /**
   * Copies the weights at once (the arrays are free again when this returns: detaching one later
   * is harmless), then packs them off the main thread. `tensors`: every entry of
   * tensorLayout(config), in its order (nanoGPT's state_dict order, biases only when config.bias),
   * each checked by name, shape and length.
   */
  load(tensors: readonly AddonTensor[]): Promise<void>;
  /** Logits (T, vocabSize) of every position; 1 <= T <= blockSize. */
  forward(ids: Int32Array): Promise<Float32Array>;
  createSession(): AddonSession;
  /**
   * `sessions[i].append(ids[i])` for every i, queued as one group: the engine batches them (and
   * whatever else is waiting) into shared forward passes, and settles them all in one callback.
   * A problem with one pair (disposed, busy, bad ids) rejects that pair's promise only.
   */
  appendMany(sessions: readonly AddonSession[], ids: readonly Int32Array[]): Promise<Float32Array>[];
  /**
   * The same, where select[i] (when given) asks for session i's top-k candidates instead of its
   * logits: a CUDA model gives them when every request of a pass asks (then the promise resolves
   * to views of the session's logits array and of an ids array of its own, overwritten by its
   * next call); the CPU engine always gives the logits.
   */
  appendMany(
    sessions: readonly AddonSession[],
    ids: readonly Int32Array[],
    select: readonly (TopKRequest | undefined)[],
  ): Promise<Float32Array | TopLogits>[];
  /** What the engine's batching has done so far (tests and diagnostics). */
  stats(): AddonBatchStats;
  /** Frees the weights now, or when the passes still running end. */
  dispose(): void;
}

export interface AddonBatchStats {
  /** Forward passes run, each one stream of the weights. */
  readonly passes: number;
  /** Requests (prefills, decode steps, forwards) they served. */
  readonly requests: number;
  /** Of which single-token steps. */
  readonly decodeRows: number;
  /** Most requests served by one pass. */
  readonly largestBatch: number;
  /** Wall-clock seconds spent in passes: the engine's busy time. */
  readonly busySeconds: number;
  /** KV caches allocated; a session or forward pass otherwise reuses one a finished session freed. */
  readonly cachesAllocated: number;
  /** Passes run while another model of the process was active, on a share of the compute budget. */
  readonly sharedPasses: number;
  /** The most threads the compute budget granted one pass. */
  readonly widestLease: number;
  /**
   * Seconds spent in each step of the passes, when the model was loaded with MICROGPT_PROFILE=1
   * in the environment (each step then reads the clock): embedding, layernorm, qkv, attention,
   * attentionProj, mlpFc, mlpProj, lmHead.
   */
  readonly phaseSeconds?: Readonly<Record<string, number>>;
  /**
   * CUDA models only: device bytes held (weights, scratch, captured graphs and the KV caches
   * that exist); decode passes replayed from a CUDA graph; graphs captured (one per decode batch
   * size met, and per whether logits or top-k candidates came back); rows whose top-k candidates
   * came back instead of their logits. With MICROGPT_PROFILE=1, phaseSeconds is device time and
   * hostSeconds the passes' host time outside the kernels.
   */
  readonly deviceBytes?: number;
  readonly graphLaunches?: number;
  readonly graphs?: number;
  readonly selectedRows?: number;
  readonly hostSeconds?: number;
}

export interface AddonCudaDevice {
  readonly index: number;
  readonly name: string;
  readonly memoryBytes: number;
  /** "major.minor", e.g. "9.0" for an H100 or H200. */
  readonly computeCapability: string;
  readonly multiprocessors: number;
  /** Compute capability 8.0 or later: the module's kernels run on it. */
  readonly usable: boolean;
}

export interface AddonCudaStatus {
  /** Path of the CUDA module that loaded, or null. */
  readonly module: string | null;
  /** Why no device is usable (no module, no driver, driver too old, no device), or null. */
  readonly reason: string | null;
  readonly devices: readonly AddonCudaDevice[];
}

/** The process's compute budget (native/compute_budget.h), shared by all native models. */
export interface AddonComputeBudget {
  /** Threads all models together compute on at most: the largest `threads` of the live models. */
  readonly capacity: number;
  /** Threads leased by passes running now. */
  readonly inUse: number;
  /** The most leased at once since the process started. */
  readonly peak: number;
  /** Live native models (every environment's). */
  readonly models: number;
}

export interface AddonSession {
  readonly length: number;
  /**
   * Appends ids (length + T <= blockSize) and resolves to the last position's logits: the
   * session's one array, overwritten by its next call. Both InferenceSession.prefill and .decode
   * (one id) come here.
   */
  append(ids: Int32Array): Promise<Float32Array>;
  append(ids: Int32Array, select: TopKRequest | undefined): Promise<Float32Array | TopLogits>;
  /** Throws while an append is running. */
  reset(): void;
  /** Gives the KV cache back to the model (for the next session) now, or when the running append ends. */
  dispose(): void;
}

/** Each kernel of one instruction set on caller-owned arrays, synchronously; for tests only. */
export interface AddonTesting {
  /** out (T, N) = epilogue(x (T, K) · W^T + b), W (N, K) unpacked; epilogue 0 store, 1 gelu, 2 add to out. */
  matmul(
    isa: AddonIsa,
    out: Float32Array,
    x: Float32Array,
    W: Float32Array,
    b: Float32Array | null,
    T: number,
    K: number,
    N: number,
    epilogue: 0 | 1 | 2,
    /** Pack W in float16 (rounded) and run the float16 kernel. */
    f16?: boolean,
  ): void;
  /** Each element rounded to the nearest float16, in place (the engine's conversion). */
  f16Round(x: Float32Array): void;
  /** out (T, C) = LayerNorm(x) * w + b. */
  layernorm(isa: AddonIsa, out: Float32Array, x: Float32Array, w: Float32Array, b: Float32Array | null, T: number, C: number): void;
  /**
   * One head of causal attention for R queries at positions first..first+R-1 (R <= 8): query r
   * (row r of q, stride qStride) attends over keys/values 0..first+r; out (R, hs). keys are in the
   * engine's key-tile layout: element d of key j at keys[floor(j / 16) * tileStride + d * 16 + j % 16].
   * values (first + R, vStride).
   */
  attention(
    isa: AddonIsa,
    out: Float32Array,
    q: Float32Array,
    keys: Float32Array,
    values: Float32Array,
    R: number,
    first: number,
    hs: number,
    qStride: number,
    tileStride: number,
    vStride: number,
  ): void;
  /** x = gelu(x) in place. */
  gelu(isa: AddonIsa, x: Float32Array): void;
  /** Kernel lab: seconds per threaded matmul (T, K) x (N, K)^T on a fresh pool of `threads`. */
  benchMatmul(isa: AddonIsa, T: number, K: number, N: number, threads: number, reps: number): number;
  /** Kernel lab: seconds per empty run over a fresh pool of `threads` (the cost of one split). */
  benchPool(threads: number, reps: number): number;
  /** Machine probe: GFLOP/s of register-only FMAs on `threads` threads (the compute ceiling). */
  benchFmaPeak(isa: AddonIsa, threads: number, iters: number): number;
  /** Machine probe: GB/s reading a buffer of `megabytes` with vector loads on `threads` threads. */
  benchReadBandwidth(isa: AddonIsa, megabytes: number, threads: number, reps: number): number;
  /**
   * The CUDA module's kernels on `device`, one at a time, over host arrays (native/cuda/api.h):
   * each means what the scalar reference of the same name means. They throw the module's why when
   * it fails, or ERR_BACKEND_UNAVAILABLE when there is no usable module or device.
   * cudaMatmul: out (T, N) = epilogue(x · W^T + b); variant 0 the engine's choice for T rows, 1
   * the few-rows (decode) kernel, 2 the tiled kernel; `f16`: W given to the kernel in float16.
   */
  cudaMatmul(
    device: number,
    out: Float32Array,
    x: Float32Array,
    W: Float32Array,
    b: Float32Array | null,
    T: number,
    K: number,
    N: number,
    epilogue: 0 | 1 | 2,
    variant: 0 | 1 | 2,
    f16?: boolean,
  ): void;
  /** out (T, N) = epilogue(LayerNorm(x; lnW, lnB) · W^T + b) in one kernel (decode steps: T <= 8). */
  cudaNormMatmul(
    device: number,
    out: Float32Array,
    x: Float32Array,
    lnW: Float32Array,
    lnB: Float32Array | null,
    W: Float32Array,
    b: Float32Array | null,
    T: number,
    K: number,
    N: number,
    epilogue: 0 | 1 | 2,
    f16?: boolean,
  ): void;
  /** out (T, C) = LayerNorm(x) * w + b. */
  cudaLayernorm(device: number, out: Float32Array, x: Float32Array, w: Float32Array, b: Float32Array | null, T: number, C: number): void;
  /** x (T, C) = wte[ids[t]] + wpe[start + t]; `f16`: wte given to the kernel in float16. */
  cudaEmbedding(
    device: number,
    x: Float32Array,
    ids: Int32Array,
    wte: Float32Array,
    wpe: Float32Array,
    start: number,
    T: number,
    V: number,
    C: number,
    f16?: boolean,
  ): void;
  /**
   * Causal self-attention of T new rows at positions start..start+T-1: qkv (T, 3C) their queries,
   * keys and values; keys and values (start, C) the cache before them; out (T, C).
   */
  cudaAttention(
    device: number,
    out: Float32Array,
    qkv: Float32Array,
    keys: Float32Array,
    values: Float32Array,
    start: number,
    T: number,
    C: number,
    nHead: number,
    blockSize: number,
  ): void;
  /**
   * The top-k candidates of each row of logits (rows, V), as a decode step selects them: row r's
   * k[r] among its first limit[r] (0 < k < limit <= V), ascending ids, into values and ids
   * (rows, V) from each row's start; returns each row's count, -1 for a row holding a NaN.
   */
  cudaSelect(
    device: number,
    logits: Float32Array,
    rows: number,
    V: number,
    k: Int32Array,
    limit: Int32Array,
    values: Float32Array,
    ids: Int32Array,
  ): Int32Array;
}

/**
 * The largest config the engine runs (native/config.h, ConfigLimits), under the names of
 * lib/config.ts's CONFIG_LIMITS, which must hold the same numbers.
 */
export interface AddonConfigLimits {
  readonly vocabSize: number;
  readonly blockSize: number;
  readonly nLayer: number;
  readonly nHead: number;
  readonly nEmbd: number;
  /** nEmbd / nHead. */
  readonly headSize: number;
  /** Float32 parameters, the tied lm_head counted once. */
  readonly parameters: number;
  /** nLayer x blockSize x nEmbd. */
  readonly layerPositionWidth: number;
  /** nLayer x nHead x blockSize^2. */
  readonly attentionScores: number;
}

/**
 * The addon's errors a user can cause carry a `code` (ERR_INVALID_ARGUMENT, ERR_INVALID_CONFIG,
 * ERR_DISPOSED, ERR_BACKEND_UNAVAILABLE), which index.ts turns into MicroGPTErrors.
 */
export interface Addon {
  /** Throws a RangeError (code ERR_INVALID_CONFIG or ERR_INVALID_ARGUMENT) for a config or thread count beyond the limits. */
  readonly Model: new (config: AddonConfig, options: AddonModelOptions) => AddonModel;
  /** Made only by AddonModel.createSession; constructing it directly throws. */
  readonly Session: new () => AddonSession;
  readonly napiVersion: number;
  readonly configLimits: AddonConfigLimits;
  /**
   * The engine's tensor table for `config`: name and shape of every tensor, in the order load()
   * takes them. Must equal lib/weights.ts's tensorLayout (a test holds them equal).
   */
  tensorLayout(config: AddonConfig): AddonTensorSpec[];
  /** The most compute threads a model takes (native/thread_pool.h, ThreadPool::kMaxThreads). */
  readonly maxThreads: number;
  /** The process's compute budget now: shared by every native model of the process. */
  computeBudget(): AddonComputeBudget;
  /** The CUDA module beside this binary and the devices it sees (native/cuda_loader.h); probed once a process. */
  cuda(): AddonCudaStatus;
  /** What the CPU probe found: the fastest instruction set and all that run here. */
  cpu(): { best: AddonIsa; supported: AddonIsa[] };
  /** null when every supported instruction set agrees with the scalar reference, else why not. */
  selfCheck(): string | null;
  readonly testing: AddonTesting;
}

/**
 * `path`: the binary node-gyp-build picked (absolute), the one that loaded or failed to; null when
 * it found none.
 */
export type AddonLoad = { addon: Addon; reason: null; path: string } | { addon: null; reason: string; path: string | null };

/** The package root: the nearest folder above this file holding package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) return dir;
    dir = up;
  }
  return dir;
}

let cached: AddonLoad | undefined;

/** Loads the addon once per thread; never throws. */
export function loadAddon(): AddonLoad {
  cached ??= tryLoad();
  return cached;
}

function tryLoad(): AddonLoad {
  const root = packageRoot();
  const require = createRequire(import.meta.url);
  let addon: Addon;
  let path: string | null = null;
  try {
    // What node-gyp-build(root) does, in two steps, to know which file it took.
    const nodeGypBuild = require('node-gyp-build') as { resolve(dir: string): string };
    path = nodeGypBuild.resolve(root);
    addon = require(path) as Addon;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    if (message.includes('No native build was found')) {
      return {
        addon: null,
        path: null,
        reason:
          `no native binary for ${process.platform}-${process.arch} in prebuilds/ or build/Release/; ` +
          'build it with `npm run build:native` (needs CMake and a C++17 compiler)',
      };
    }
    if (message.includes("Cannot find module 'node-gyp-build'")) {
      return { addon: null, path: null, reason: 'the node-gyp-build package is missing; reinstall microgpt' };
    }
    return {
      addon: null,
      path,
      reason: `the native binary failed to load (${message.split('\n')[0]}); rebuild it with \`npm run build:native\``,
    };
  }
  if (typeof addon?.Model !== 'function' || typeof addon.selfCheck !== 'function') {
    return { addon: null, path, reason: 'the native binary is not microgpt\'s (unexpected exports); rebuild it with `npm run build:native`' };
  }
  const problem = addon.selfCheck();
  if (problem !== null) {
    return { addon: null, path, reason: `the native engine failed its self-check: ${problem}; please report this with your CPU model` };
  }
  const forced = process.env['MICROGPT_ISA'];
  if (forced !== undefined && forced !== '' && !addon.cpu().supported.includes(forced as AddonIsa)) {
    return {
      addon: null,
      path,
      reason: `MICROGPT_ISA=${forced} is not an instruction set this CPU and build run (supported: ${addon.cpu().supported.join(', ')}); unset it or pick one of those`,
    };
  }
  return { addon, reason: null, path };
}

/** The instruction set MICROGPT_ISA forces, if any (checked by loadAddon). */
export function forcedIsa(): AddonIsa | undefined {
  const forced = process.env['MICROGPT_ISA'];
  return forced === undefined || forced === '' ? undefined : (forced as AddonIsa);
}
