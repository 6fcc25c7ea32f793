import { open, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkDeviceOption, cudaDeviceProblem } from './backends/cuda.js';
import { resolveBackend } from './backends/index.js';
import { MAX_THREADS, type BackendChoice, type ModelRuntime, type PrecisionChoice, type RuntimeOptions } from './backends/types.js';
import { describe, validateConfig, type ModelConfig } from './config.js';
import { MicroGPTError, badCheckpoint, invalidArgument, optionsObject, shownPath } from './errors.js';
import { readSafetensors } from './formats/safetensors.js';
import { readMetaPkl, readTorchCheckpoint } from './formats/torch-checkpoint.js';
import { Model, type ModelSourceInfo } from './model.js';
import { CharTokenizer } from './tokenizer.js';
import { assembleWeights, namedTensors, type ModelWeights } from './weights.js';

export interface LoadOptions {
  /** nanoGPT's meta.pkl (the vocabulary) for a ckpt.pt; by default looked for beside the checkpoint. */
  meta?: string;
  /** Engine: 'auto' (default) takes the fastest available. */
  backend?: BackendChoice;
  /** Worker threads for engines that use them (default: the available parallelism). */
  threads?: number;
  /**
   * How the engine keeps the matrices: 'auto' (default) float16 where that changes no weight (the
   * bundled model, float16 checkpoints), else float32; 'f32'; or 'f16', rounding float32 weights
   * (half the memory traffic of a decode step, logits within about 1e-3).
   */
  precision?: PrecisionChoice;
  /**
   * The CUDA device to run on (its index, default 0), for backend 'cuda', or 'auto' when it picks
   * CUDA; naming it with backend 'native' or 'js' is an error.
   */
  device?: number;
}

/** A model read from disk, before an engine holds it. */
export interface ModelFile {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  readonly vocab: string[];
  readonly info: ModelSourceInfo;
}

/**
 * Loads a model: 'default' (the Shakespeare model shipped with the package), a `.safetensors`
 * file of ours, a nanoGPT `ckpt.pt`, or a nanoGPT out_dir holding one.
 */
export async function loadModel(source: string, options: LoadOptions = {}): Promise<Model> {
  checkLoadOptions(options);
  const file = await readModelFile(source, options.meta);
  return instantiate(file.config, file.weights, file.vocab, file.info, options);
}

/** The name that loads the model shipped with the package (a file named so needs './default'). */
export const DEFAULT_MODEL = 'default';

/** Where the bundled model lies: models/ at the package root (this file is dist/lib/load.js). */
export function defaultModelPath(): string {
  return fileURLToPath(new URL('../../models/default.safetensors', import.meta.url));
}

async function bundledModelPath(): Promise<string> {
  const path = defaultModelPath();
  if (!(await stat(path).then((s) => s.isFile()).catch(() => false))) {
    throw invalidArgument(`the bundled default model is missing from this installation (${path}): reinstall microgpt, or give a model path`);
  }
  return path;
}

/** Reads and validates a model file of any supported format. */
export async function readModelFile(source: string, meta?: string): Promise<ModelFile> {
  if (typeof source !== 'string' || source.length === 0) throw invalidArgument('model source must be a path');
  const path = source === DEFAULT_MODEL ? await bundledModelPath() : await checkpointPath(source);
  const format = await sniffFormat(path);
  if (format === 'safetensors') {
    const model = await readSafetensors(path);
    return {
      config: model.config,
      weights: model.weights,
      vocab: model.vocab,
      info: { path, format, storedDType: model.storedDType, metadata: model.metadata },
    };
  }
  const checkpoint = await readTorchCheckpoint(path);
  const weights = assembleWeights(checkpoint.config, checkpoint.tensors, path);
  const metaPath = meta ?? (await findMeta(path, checkpoint.dataset));
  const vocab = await readMetaPkl(metaPath);
  if (vocab.length > checkpoint.config.vocabSize) {
    throw badCheckpoint(metaPath, `holds ${vocab.length} characters but the model in ${shownPath(path)} has vocabSize ${checkpoint.config.vocabSize}`);
  }
  const metadata: Record<string, string> = {};
  if (checkpoint.iterNum !== null) metadata['iterNum'] = String(checkpoint.iterNum);
  if (checkpoint.bestValLoss !== null) metadata['bestValLoss'] = String(checkpoint.bestValLoss);
  return {
    config: checkpoint.config,
    weights,
    vocab,
    info: { path, format: 'nanogpt-checkpoint', storedDType: checkpoint.storedDType, metadata },
  };
}

/** A directory is a nanoGPT out_dir: its ckpt.pt. */
async function checkpointPath(source: string): Promise<string> {
  const info = await stat(source).catch((error: NodeJS.ErrnoException) => {
    throw new MicroGPTError('ERR_INVALID_ARGUMENT', `cannot read model ${shownPath(source)}: ${error.code === 'ENOENT' ? 'no such file or directory' : error.message}`);
  });
  // A FIFO, socket or device would block the read (or never end): only regular files are models.
  if (info.isFile()) return source;
  if (!info.isDirectory()) throw invalidArgument(`${shownPath(source)} is not a regular file or a directory`);
  const ckpt = join(source, 'ckpt.pt');
  const inner = await stat(ckpt).catch(() => null);
  if (inner === null) throw invalidArgument(`${shownPath(source)} is a directory without a ckpt.pt: give a .safetensors file, a ckpt.pt or a nanoGPT out_dir`);
  if (!inner.isFile()) throw invalidArgument(`${shownPath(ckpt)} is not a regular file`);
  return ckpt;
}

async function sniffFormat(path: string): Promise<'safetensors' | 'torch'> {
  const handle = await open(path, 'r');
  const head = Buffer.alloc(8);
  try {
    await handle.read(head, 0, 8, 0);
  } finally {
    await handle.close();
  }
  // A zip is a torch.save archive; a bare pickle (0x80 PROTO) is a legacy torch file or not a
  // checkpoint at all: the torch reader says which. Anything else must be safetensors.
  if (head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) return 'torch';
  if (head[0] === 0x80) return 'torch';
  return 'safetensors';
}

/**
 * nanoGPT keeps meta.pkl in data/<dataset>/ of its repository and the checkpoint in out_dir/; its
 * sample.py looks in data/<config.dataset>/. Look beside the checkpoint, then there, relative to
 * the working directory and to the out_dir's parent.
 */
async function findMeta(checkpoint: string, dataset: string | null): Promise<string> {
  const dir = dirname(checkpoint);
  const candidates = [join(dir, 'meta.pkl')];
  if (dataset !== null) candidates.push(join('data', dataset, 'meta.pkl'), join(dir, '..', 'data', dataset, 'meta.pkl'));
  for (const candidate of candidates) {
    if (await stat(candidate).then((s) => s.isFile()).catch(() => false)) return candidate;
  }
  throw invalidArgument(
    `no vocabulary for ${shownPath(checkpoint)}: looked for ${candidates.map(shownPath).join(', ')}; pass the meta.pkl that nanoGPT's prepare.py wrote (option meta, or --meta)`,
  );
}

/**
 * A model from weights in memory (random weights for a benchmark, weights from your own training
 * code): checked like a file's, then handed to an engine.
 */
export async function createModel(
  config: ModelConfig,
  weights: ModelWeights,
  vocab: readonly string[],
  options: Omit<LoadOptions, 'meta'> & { name?: string } = {},
): Promise<Model> {
  checkLoadOptions(options);
  const name = options.name ?? '(memory)';
  const checked = validateConfig(config, `${name}: config`);
  const assembled = assembleWeights(checked, namedTensors(checked, weights), name);
  return instantiate(checked, assembled, vocab, { path: name, format: 'memory', storedDType: 'F32', metadata: {} }, options);
}

function checkLoadOptions(given: Omit<LoadOptions, 'meta'>): void {
  const options = optionsObject(given, 'load options');
  if (options.threads !== undefined && (!Number.isInteger(options.threads) || options.threads < 1 || options.threads > MAX_THREADS)) {
    throw invalidArgument(`threads must be an integer from 1 to ${MAX_THREADS}, got ${describe(options.threads)}`);
  }
  if (options.precision !== undefined && !['auto', 'f32', 'f16'].includes(options.precision)) {
    throw invalidArgument(`precision must be 'auto', 'f32' or 'f16', got ${describe(options.precision)}`);
  }
  checkDeviceOption(options.device);
  // An unknown or unavailable backend (or CUDA device) fails before any file is read.
  const backend = resolveBackend(options.backend ?? 'auto');
  if (options.device !== undefined) {
    if (options.backend === 'native' || options.backend === 'js') {
      throw invalidArgument(`device selects a CUDA device: backend '${options.backend}' has none; leave device out, or use backend 'cuda' or 'auto'`);
    }
    const problem = backend.name === 'cuda' ? cudaDeviceProblem(options.device) : null;
    if (problem !== null) {
      throw new MicroGPTError('ERR_BACKEND_UNAVAILABLE', `backend 'cuda' is not available: ${problem}; use backend 'native', 'js' or 'auto'`);
    }
  }
}

async function instantiate(
  config: ModelConfig,
  weights: ModelWeights,
  vocab: readonly string[],
  info: ModelSourceInfo,
  options: Omit<LoadOptions, 'meta'>,
): Promise<Model> {
  const tokenizer = new CharTokenizer(vocab);
  const backend = resolveBackend(options.backend ?? 'auto');
  const runtimeOptions: RuntimeOptions = {
    ...(options.threads === undefined ? {} : { threads: options.threads }),
    ...(options.precision === undefined ? {} : { precision: options.precision }),
    ...(options.device === undefined || backend.name !== 'cuda' ? {} : { device: options.device }),
  };
  let runtime: ModelRuntime;
  try {
    runtime = await backend.load(config, weights, runtimeOptions);
  } catch (error) {
    // 'auto' picked CUDA, and the device cannot take this model (out of memory, above all): the
    // model runs on the next engine, with a warning saying why, rather than not at all.
    if ((options.backend ?? 'auto') !== 'auto' || backend.name !== 'cuda' || !(error instanceof MicroGPTError) || error.code !== 'ERR_BACKEND_UNAVAILABLE') {
      throw error;
    }
    const fallback = resolveBackend('auto', ['cuda']);
    process.emitWarning(`${error.message}; backend 'auto' runs this model on the ${fallback.name} engine instead`, { code: 'MICROGPT_CUDA_FALLBACK' });
    const { device: _cudaOnly, ...cpuOptions } = runtimeOptions;
    runtime = await fallback.load(config, weights, cpuOptions);
  }
  try {
    return new Model(runtime, tokenizer, info);
  } catch (error) {
    runtime.dispose();
    throw error;
  }
}
