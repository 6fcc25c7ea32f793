/**
 * `microgpt bench`: what a user gets from each engine on the standard shapes, measured through the
 * public API (sampling loop included), every figure the median of several runs, all engines in the
 * same process so their ratio is fair.
 */
import { availableParallelism, cpus } from 'node:os';
import { checkDeviceOption, cudaDeviceProblem, cudaStatus } from '../backends/cuda.js';
import { availableBackends } from '../backends/index.js';
import type { BackendName } from '../backends/types.js';
import { linear } from '../backends/js/math.js';
import { describe, parameterCount, type ModelConfig } from '../config.js';
import { MicroGPTError, invalidArgument } from '../errors.js';
import { createModel, loadModel } from '../load.js';
import type { Model } from '../model.js';
import { Rng } from '../sampling/rng.js';
import { nativeProbes, type MachineProbes } from './probes.js';
import { BENCH_SHAPE_NAMES, BENCH_SHAPES, BUNDLED_SHAPE, randomWeights, syntheticVocab } from './shapes.js';

export interface BenchOptions {
  /** Shape names from BENCH_SHAPE_NAMES: 'default' (the bundled model) or one of BENCH_SHAPES (default: all). */
  shapes?: string[];
  /** Engines to measure (default: every available one). */
  backends?: BackendName[];
  /** The CUDA device the cuda engine runs on (default 0). */
  device?: number;
  /** Timed runs per figure for compiled engines (default 5); the js engine gets fewer, see JS_RUNS. */
  runs?: number;
  threads?: number;
  /** Progress lines (to stderr in the CLI). */
  log?: (line: string) => void;
}

export interface Figure {
  /** Median of the runs. */
  readonly median: number;
  readonly runs: number[];
  readonly unit: string;
  /** How it was measured, where that differs from the shape's nominal case. */
  readonly note?: string;
}

export interface EngineFigures {
  readonly decodeBatch1: Figure;
  readonly decodeBatch8: Figure;
  readonly prefillBatch1: Figure;
  readonly prefillBatch8: Figure;
}

/**
 * A long generation from a one-token prompt, far past the window, under each context policy
 * (native engine): 'shift' against the same engine's within-window decode (decodeBatch1), and
 * against 'slide', nanoGPT's exact window, which re-runs the whole window for every token.
 */
export interface LongGeneration {
  readonly tokens: number;
  /** Tokens 'shift' keeps at each shift (the default, blockSize / 2). */
  readonly keep: number;
  readonly shift: Figure;
  /** Left out where a run would take many minutes (gpt2-124M: a 1,024-token pass per token). */
  readonly slide?: Figure;
  /** shift / within-window decode at batch 1. */
  readonly shiftFraction: number;
  /** shift / slide. */
  readonly shiftOverSlide?: number;
}

export interface ShapeReport {
  readonly shape: string;
  readonly config: ModelConfig;
  readonly parameters: number;
  /**
   * Bytes a decode step reads: every weight once (lm_head is wte), fp32 for the random shapes;
   * for the bundled model, its matrices in float16 as the native engine keeps them (exactly: the
   * file is float16).
   */
  readonly weightBytes: number;
  /** Where the weights come from: random (of nanoGPT's scale), or the bundled model's trained ones. */
  readonly weights: 'random' | 'bundled';
  readonly longGeneration?: LongGeneration;
  readonly engines: Partial<Record<BackendName, EngineFigures>>;
  /**
   * GB/s reading a buffer of weightBytes (native probe), and the CPU engines' batch-1 decode as a
   * fraction of it (not the cuda engine's: its weights are read from the device's memory).
   */
  readonly bandwidth?: { readonly readGBs: Figure; readonly decodeFraction: Partial<Record<BackendName, number>> };
  /**
   * The native engine with its matrices in float16 (precision 'f16', the random weights rounded):
   * batch-1 decode, and the bytes a decode step then reads. Not exact against PyTorch's float32,
   * so apart from the fp32 figures above.
   */
  readonly nativeF16?: { readonly decodeBatch1: Figure; readonly weightBytes: number };
}

export interface GemmReport {
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly label: string;
  readonly engines: Partial<Record<BackendName, Figure>>;
  /** The native GEMM as a fraction of the FMA peak. */
  readonly peakFraction?: number;
}

export interface BenchReport {
  readonly date: string;
  readonly machine: { cpu: string; logicalCores: number; node: string; platform: string };
  readonly threads: number;
  /**
   * Instruction set of the native engine and its probes, and the FMA peak they measured: every
   * run in `fmaPeakGflops.runs` (sampled at the start and again at the end), and `fmaPeak`,
   * the highest, which the GEMM fractions use. A peak is what the cores can do; a moment when a
   * vCPU was busy elsewhere only lowers a run (on the 2-vCPU VM, single runs fell to 116 against
   * 233, and in one run all five taken at the start stayed at or below 201).
   */
  readonly native?: { readonly isa: string; readonly fmaPeakGflops: Figure; readonly fmaPeak: number };
  /** The device the cuda engine ran on, when it was measured. */
  readonly cuda?: { readonly device: number; readonly name: string; readonly computeCapability: string };
  readonly shapes: ShapeReport[];
  readonly gemm: GemmReport[];
}

/** Every generation of the benchmark samples so: the whole sampling loop runs. */
const SAMPLING = { temperature: 1, topK: 200, seed: 1 } as const;

/** The js engine is ~100x slower: fewer runs and shorter work keep a bench run in minutes. */
const JS_RUNS = 3;

export async function runBench(options: BenchOptions = {}): Promise<BenchReport> {
  const log = options.log ?? (() => {});
  const shapeNames = options.shapes ?? [...BENCH_SHAPE_NAMES];
  for (const s of shapeNames) if (!BENCH_SHAPE_NAMES.includes(s)) throw invalidArgument(`unknown shape ${describe(s)} (shapes: ${BENCH_SHAPE_NAMES.join(', ')})`);
  const available = availableBackends().filter((b) => b.available).map((b) => b.name);
  const engines = options.backends ?? available;
  for (const e of engines) {
    if (!available.includes(e)) throw invalidArgument(`backend '${e}' is not available: ${availableBackends().find((b) => b.name === e)?.reason}`);
  }
  const runs = options.runs ?? 5;
  if (!Number.isInteger(runs) || runs < 1 || runs > 100) throw invalidArgument(`runs must be an integer from 1 to 100, got ${describe(runs)}`);
  const threads = options.threads ?? availableParallelism();
  checkDeviceOption(options.device);
  if (options.device !== undefined && !engines.includes('cuda')) {
    throw invalidArgument(`device selects the cuda engine's device, and the engines measured are ${engines.join(', ')}; leave device out or measure backend 'cuda'`);
  }
  const device = options.device ?? 0;
  const problem = engines.includes('cuda') ? cudaDeviceProblem(device) : null;
  if (problem !== null) throw new MicroGPTError('ERR_BACKEND_UNAVAILABLE', `backend 'cuda' is not available: ${problem}`);
  const cudaDevice = engines.includes('cuda') ? cudaStatus()?.devices[device] : undefined;

  const probes = engines.includes('native') ? nativeProbes() : null;
  // The FMA peak is sampled at the start and again at the end, minutes apart, and the
  // highest run is the peak: a busy stretch at one moment does not decide it.
  const peakRuns: number[] = [];
  const samplePeak = (moment: string) => {
    if (probes === null) return;
    const figure = sampled(runs, 'GFLOP/s', () => probes.fmaPeak(threads));
    peakRuns.push(...figure.runs);
    log(`native (${probes.isa}): FMA peak ${Math.max(...figure.runs).toFixed(1)} GFLOP/s on ${threads} threads (${moment})`);
  };
  samplePeak('at the start');
  // The GEMMs first, in a quiet process: measured last, they followed the freeing of gpt2-124M's
  // half-gigabyte js model, and two of three full runs had GEMMs at half speed (112 GFLOP/s in
  // every sample) while a standalone GEMM-only run and the native-only runs did not.
  const gemmRuns = await measureGemm(engines, probes, threads, runs, log);

  const shapes: ShapeReport[] = [];
  for (const shape of shapeNames) {
    const bundled = shape === BUNDLED_SHAPE;
    // A model of this shape on `engine`: the bundled one as loadModel gives it (precision 'auto':
    // float16 matrices, exact), else random weights in float32.
    let load: (engine: BackendName, precision?: 'f32' | 'f16') => Promise<Model>;
    let config: ModelConfig;
    if (bundled) {
      load = (engine) => loadModel('default', { backend: engine, threads, ...(engine === 'cuda' ? { device } : {}) });
      const probe = await loadModel('default', { backend: 'js' });
      config = probe.config;
      probe.dispose();
    } else {
      config = BENCH_SHAPES[shape] as ModelConfig;
      log(`${shape}: building random weights (${(parameterCount(config) / 1e6).toFixed(1)}M parameters)`);
      const weights = randomWeights(config);
      const vocab = syntheticVocab(config.vocabSize);
      load = (engine, precision = 'f32') =>
        createModel(config, weights, vocab, { backend: engine, threads, name: shape, precision, ...(engine === 'cuda' ? { device } : {}) });
    }
    let report: ShapeReport = {
      shape,
      config,
      parameters: parameterCount(config),
      weightBytes: bundled ? float16WeightBytes(config) : parameterCount(config) * 4,
      weights: bundled ? 'bundled' : 'random',
      engines: {},
    };
    for (const engine of engines) {
      const model = await load(engine);
      try {
        const figures = await measureEngine(model, engine === 'js' ? Math.min(runs, JS_RUNS) : runs, engine, log);
        report.engines[engine] = figures;
        if (engine === 'native') {
          report = { ...report, longGeneration: await measureLongGeneration(model, runs, figures.decodeBatch1, log) };
        }
      } finally {
        model.dispose();
      }
    }
    if (engines.includes('native') && !bundled) {
      const model = await load('native', 'f16');
      try {
        const decodeBatch1 = await measureDecode(model, runs, 'native');
        log(`native ${shape} (f16 weights): decode batch 1 ${decodeBatch1.median.toFixed(1)} tokens/s`);
        report = { ...report, nativeF16: { decodeBatch1, weightBytes: float16WeightBytes(config) } };
      } finally {
        model.dispose();
      }
    }
    if (probes !== null) {
      const megabytes = Math.ceil(report.weightBytes / 2 ** 20);
      const readGBs = sampled(runs, 'GB/s', () => probes.readBandwidth(megabytes, threads));
      const decodeFraction: Partial<Record<BackendName, number>> = {};
      for (const [engine, figures] of Object.entries(report.engines) as [BackendName, EngineFigures][]) {
        if (engine !== 'cuda') decodeFraction[engine] = (report.weightBytes * figures.decodeBatch1.median) / 1e9 / readGBs.median;
      }
      log(`${shape}: reading ${megabytes} MB at ${readGBs.median.toFixed(1)} GB/s`);
      shapes.push({ ...report, bandwidth: { readGBs, decodeFraction } });
    } else {
      shapes.push(report);
    }
  }
  samplePeak('at the end');
  const native: BenchReport['native'] =
    probes === null
      ? undefined
      : { isa: probes.isa, fmaPeakGflops: { median: median(peakRuns), runs: peakRuns, unit: 'GFLOP/s' }, fmaPeak: Math.max(...peakRuns) };
  const gemm = gemmRuns.map((g) => {
    const figure = g.engines.native;
    return native === undefined || figure === undefined ? g : { ...g, peakFraction: figure.median / native.fmaPeak };
  });
  return {
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model.trim() ?? 'unknown', logicalCores: availableParallelism(), node: process.version, platform: `${process.platform}-${process.arch}` },
    threads,
    ...(native === undefined ? {} : { native }),
    ...(cudaDevice === undefined ? {} : { cuda: { device, name: cudaDevice.name, computeCapability: cudaDevice.computeCapability } }),
    shapes,
    gemm,
  };
}

async function measureEngine(model: Model, runs: number, engine: BackendName, log: (line: string) => void): Promise<EngineFigures> {
  const { blockSize } = model.config;
  const vocab = model.tokenizer.vocab;
  const rng = new Rng(7);
  const text = (n: number) => Array.from({ length: n }, () => vocab[Math.floor(rng.uniform() * vocab.length)] as string).join('');
  const sampling = SAMPLING;
  const label = `${engine} ${model.source.path}`;

  const large = parameterCount(model.config) > 50e6;
  const decodeTokens = decodeLength(model, engine);
  const batchRuns = engine === 'js' ? 1 : runs;
  const prompt = text(1);
  const decodeBatch1 = await measureDecode(model, runs, engine);
  log(`${label}: decode batch 1 ${decodeBatch1.median.toFixed(1)} tokens/s`);
  const decodeBatch8 = await timed(batchRuns, 'tokens/s', async () => {
    await model.generateMany(prompt, { ...sampling, maxNewTokens: decodeTokens, numSamples: 8 });
    return 8 * decodeTokens;
  }, undefined, engine !== 'js');
  log(`${label}: decode batch 8 ${decodeBatch8.median.toFixed(1)} tokens/s`);

  // Prefill: a full block of prompt, then one sampled token. The js engine would need minutes for
  // gpt2-124M's 1024 tokens; it measures a shorter window there, and says so.
  const window = engine === 'js' && large ? 32 : blockSize;
  const note = window < blockSize ? `${window}-token window, not the full block of ${blockSize}` : undefined;
  const block = text(window);
  const prefillBatch1 = await timed(
    runs,
    'tokens/s',
    async () => {
      await model.generate(block, { ...sampling, maxNewTokens: 1 });
      return window;
    },
    note,
  );
  log(`${label}: prefill batch 1 ${prefillBatch1.median.toFixed(1)} tokens/s`);
  const prefillBatch8 = await timed(
    batchRuns,
    'tokens/s',
    async () => {
      await model.generateMany(block, { ...sampling, maxNewTokens: 1, numSamples: 8 });
      return 8 * window;
    },
    note,
    engine !== 'js',
  );
  log(`${label}: prefill batch 8 ${prefillBatch8.median.toFixed(1)} tokens/s`);
  return { decodeBatch1, decodeBatch8, prefillBatch1, prefillBatch8 };
}

/** Tokens of the long generation: 3,000, or 2,048 on windows of 1,024 and more (gpt2-124M). */
export function longGenerationTokens(config: ModelConfig): number {
  return config.blockSize >= 1024 ? 2048 : 3000;
}

/**
 * The long generation (native engine): `tokens` from a one-token prompt under 'shift', and under
 * 'slide' where that takes seconds, not many minutes: past the window, 'slide' runs a whole-window
 * pass per token, which on gpt2-124M is about a second each here. Runs are long, so no warm-up
 * (the engine is warm from the figures before) and at most 3 of 'slide'.
 */
async function measureLongGeneration(model: Model, runs: number, withinWindow: Figure, log: (line: string) => void): Promise<LongGeneration> {
  const { blockSize } = model.config;
  const tokens = longGenerationTokens(model.config);
  const keep = Math.floor(blockSize / 2);
  const prompt = model.tokenizer.vocab[0] as string;
  const label = `native ${model.source.path}`;
  const generation = (context: 'shift' | 'slide') => async () => {
    await model.generate(prompt, { ...SAMPLING, maxNewTokens: tokens, context });
    return tokens;
  };
  const large = blockSize >= 1024;
  const shift = await timed(large ? Math.min(runs, 3) : runs, 'tokens/s', generation('shift'), undefined, false);
  log(`${label}: ${tokens} tokens, context 'shift' (keep ${keep}): ${shift.median.toFixed(1)} tokens/s`);
  const shiftFraction = shift.median / withinWindow.median;
  if (large) return { tokens, keep, shift, shiftFraction };
  const slide = await timed(Math.min(runs, 3), 'tokens/s', generation('slide'), undefined, false);
  log(`${label}: ${tokens} tokens, context 'slide': ${slide.median.toFixed(1)} tokens/s`);
  return { tokens, keep, shift, slide, shiftFraction, shiftOverSlide: shift.median / slide.median };
}

/**
 * Decode: a one-token prompt, then tokens one at a time (all inside blockSize: no re-prefill).
 * The js engine is given less work on large shapes, where each of its tokens takes seconds.
 */
function decodeLength(model: Model, engine: BackendName): number {
  const large = parameterCount(model.config) > 50e6;
  return Math.min(engine !== 'js' ? 128 : large ? 4 : 24, model.config.blockSize - 1);
}

async function measureDecode(model: Model, runs: number, engine: BackendName): Promise<Figure> {
  const decodeTokens = decodeLength(model, engine);
  const prompt = model.tokenizer.vocab[0] as string;
  return timed(runs, 'tokens/s', async () => {
    await model.generate(prompt, { ...SAMPLING, maxNewTokens: decodeTokens });
    return decodeTokens;
  });
}

/** Bytes of a model whose matrices (wte, Linear weights) are float16 and the rest float32. */
function float16WeightBytes(c: ModelConfig): number {
  const matrices = c.vocabSize * c.nEmbd + c.nLayer * 12 * c.nEmbd * c.nEmbd;
  return matrices * 2 + (parameterCount(c) - matrices) * 4;
}

/** GEMM shapes: the cube, and the prefill matmuls of char-10M (T = 256 tokens, C = 384). */
export const GEMM_SHAPES = [
  { label: '1024³', M: 1024, N: 1024, K: 1024 },
  { label: 'char-10M c_attn', M: 256, N: 1152, K: 384 },
  { label: 'char-10M c_fc', M: 256, N: 1536, K: 384 },
  { label: 'char-10M mlp c_proj', M: 256, N: 384, K: 1536 },
] as const;

async function measureGemm(
  engines: BackendName[],
  probes: MachineProbes | null,
  threads: number,
  runs: number,
  log: (line: string) => void,
): Promise<GemmReport[]> {
  const out: GemmReport[] = [];
  for (const { label, M, N, K } of GEMM_SHAPES) {
    const report: GemmReport = { label, M, N, K, engines: {} };
    if (probes !== null) {
      const figure = sampled(runs, 'GFLOP/s', () => probes.gemm(M, N, K, threads));
      report.engines.native = figure;
      log(`native GEMM ${label}: ${figure.median.toFixed(1)} GFLOP/s`);
    }
    if (engines.includes('js')) {
      const rng = new Rng(3);
      const x = Float32Array.from({ length: M * K }, () => rng.uniform() - 0.5);
      const w = Float32Array.from({ length: N * K }, () => rng.uniform() - 0.5);
      const y = new Float32Array(M * N);
      report.engines.js = await timed(Math.min(runs, JS_RUNS), 'GFLOP/s', async () => {
        linear(y, x, w, null, M, K, N);
        return (2 * M * N * K) / 1e9;
      });
      log(`js GEMM ${label}: ${report.engines.js.median.toFixed(2)} GFLOP/s`);
    }
    out.push(report);
  }
  return out;
}

/**
 * `runs` timed calls after one warm-up call (skipped where the engine is already warm and a call
 * is long); each call returns the amount of work it did.
 */
async function timed(runs: number, unit: string, work: () => Promise<number>, note?: string, warmUp = true): Promise<Figure> {
  if (warmUp) await work();
  const rates: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = process.hrtime.bigint();
    const amount = await work();
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    rates.push(amount / seconds);
  }
  return { median: median(rates), runs: rates, unit, ...(note === undefined ? {} : { note }) };
}

/** `runs` rates measured by the callee itself (the native probes time their own loops). */
function sampled(runs: number, unit: string, rate: () => number): Figure {
  const rates = Array.from({ length: runs }, rate);
  return { median: median(rates), runs: rates, unit };
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}
