/**
 * What the fuzzer attacks. A target makes a case from a seeded generator (bytes of a file, or a
 * call) and runs it; a case passes when it resolves, or rejects with a one-line MicroGPTError (or
 * with what the case itself threw or aborted with). Anything else, a crash, a hang or a jump in
 * peak memory is a finding (run.ts and worker.ts watch for those).
 */
import { mkdtempSync, rmSync, writeFileSync, copyFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  availableBackends,
  CharTokenizer,
  createModel,
  evaluate,
  loadModel,
  MicroGPTError,
  Rng,
  Sampler,
  validateConfig,
  type BackendName,
  type Model,
  type ModelConfig,
} from '../../lib/index.js';
import { readMetaPkl } from '../../lib/formats/torch-checkpoint.js';
import { entriesOf, writeZip, type ArchiveEntry } from '../fixtures/hostile/archives.js';
import { fixture, randomTestWeights } from '../helpers.js';
import { FuzzRng, havoc, mutatePickle, mutateSafetensors, mutateZipRecords } from './mutate.js';

/** What a case threw on purpose (a trapping getter): passing it through is right. */
export class FuzzTrap extends Error {
  constructor() {
    super('fuzz trap');
    this.name = 'FuzzTrap';
  }
}

export interface FuzzTarget {
  readonly name: string;
  /** The bytes of a file case, or null for a call case (which replays from its seed). */
  make(rng: FuzzRng): Uint8Array | null;
  /** Runs a case; `rng` continues the generator that made it. */
  run(input: Uint8Array | null, rng: FuzzRng, scratch: string): Promise<void>;
}

const BACKENDS: readonly BackendName[] = availableBackends().filter((b) => b.available).map((b) => b.name);

/** Why an outcome is a finding, or null when it is an acceptable one. */
export function judge(error: unknown): string | null {
  if (error instanceof FuzzTrap) return null;
  if (error instanceof MicroGPTError) {
    return error.message.includes('\n') || error.message.includes('\r') ? `a MicroGPTError of more than one line: ${JSON.stringify(error.message.slice(0, 300))}` : null;
  }
  // An aborted call rejects with its signal's reason: AbortSignal.abort()'s and AbortSignal.timeout()'s.
  if (error instanceof DOMException && (error.name === 'AbortError' || error.name === 'TimeoutError')) return null;
  const text = error instanceof Error ? `${error.name}: ${error.message}\n${error.stack ?? ''}` : String(error);
  return `not a MicroGPTError: ${text.slice(0, 1200)}`;
}

/** Loads a file that may hold a model and, when it does, generates a few tokens with it. */
async function loadAndUse(path: string, rng: FuzzRng, options: { meta?: string } = {}): Promise<void> {
  const model = await loadModel(path, { ...options, backend: rng.pick(BACKENDS) });
  try {
    const prompt = model.tokenizer.vocab[rng.below(model.tokenizer.size)] as string;
    await model.generate(prompt, { maxNewTokens: 1 + rng.below(2 * model.config.blockSize), seed: rng.u32(), temperature: rng.pick([0, 0.8, 1]) });
    await model.logits([0]);
  } finally {
    model.dispose();
  }
}

// ---- file targets -------------------------------------------------------------------------------

const SAFETENSORS_SEEDS = ['tiny-bias.safetensors', 'tiny-nobias-f16.safetensors'];
const CHECKPOINT_SEEDS = ['tiny-bf16', 'tiny-nobias-f16'];

const seedFiles = new Map<string, Uint8Array>();
function seedFile(...parts: string[]): Uint8Array {
  const path = fixture('models', ...parts);
  let bytes = seedFiles.get(path);
  if (bytes === undefined) {
    bytes = readFileSync(path);
    seedFiles.set(path, bytes);
  }
  return bytes;
}

/** The entries of the seed checkpoints, read once (with our own reader: they are valid). */
const seedArchives = new Map<string, ArchiveEntry[]>();
export async function prepareTargets(): Promise<void> {
  for (const name of CHECKPOINT_SEEDS) seedArchives.set(name, await entriesOf(fixture('models', name, 'ckpt.pt')));
}

function archive(name: string): ArchiveEntry[] {
  const entries = seedArchives.get(name);
  if (entries === undefined) throw new Error(`internal: prepareTargets() was not awaited (${name})`);
  return entries;
}

/** Writes a checkpoint case beside a copy of its vocabulary and loads it. */
async function runCheckpoint(input: Uint8Array, rng: FuzzRng, scratch: string, seed: string): Promise<void> {
  const dir = mkdtempSync(join(scratch, 'ckpt-'));
  try {
    writeFileSync(join(dir, 'ckpt.pt'), input);
    copyFileSync(fixture('models', seed, 'meta.pkl'), join(dir, 'meta.pkl'));
    await loadAndUse(dir, rng);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The first byte of a checkpoint case says which seed it grew from, so a saved case replays alone. */
function tagged(seedIndex: number, bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.length + 1);
  out[0] = seedIndex;
  out.set(bytes, 1);
  return out;
}
function untag(input: Uint8Array): [string, Uint8Array] {
  return [CHECKPOINT_SEEDS[(input[0] ?? 0) % CHECKPOINT_SEEDS.length] as string, input.subarray(1)];
}

export const TARGETS: readonly FuzzTarget[] = [
  {
    name: 'safetensors',
    make: (rng) => mutateSafetensors(seedFile(rng.pick(SAFETENSORS_SEEDS)), rng),
    async run(input, rng, scratch) {
      const path = join(scratch, 'case.safetensors');
      writeFileSync(path, input as Uint8Array);
      await loadAndUse(path, rng);
    },
  },
  {
    name: 'zip',
    make(rng) {
      const seed = rng.below(CHECKPOINT_SEEDS.length);
      const bytes = seedFile(CHECKPOINT_SEEDS[seed] as string, 'ckpt.pt');
      return tagged(seed, rng.chance(0.7) ? mutateZipRecords(bytes, rng) : havoc(bytes, rng));
    },
    async run(input, rng, scratch) {
      const [seed, bytes] = untag(input as Uint8Array);
      await runCheckpoint(bytes, rng, scratch, seed);
    },
  },
  {
    // data.pkl (or a storage) edited, then archived again with true sizes and CRCs, so the edit
    // reaches the unpickler and the tensor views instead of the zip checks.
    name: 'pickle',
    make(rng) {
      const seed = rng.below(CHECKPOINT_SEEDS.length);
      const entries = archive(CHECKPOINT_SEEDS[seed] as string);
      const target = rng.chance(0.8) ? entries.findIndex((e) => e.name.endsWith('/data.pkl')) : rng.below(entries.length);
      const edited = entries.map((e, i) =>
        i !== target ? e : { ...e, data: e.name.endsWith('.pkl') ? mutatePickle(e.data, rng) : havoc(e.data, rng) },
      );
      return tagged(seed, writeZip(edited, { zip64: rng.chance(0.2) }));
    },
    async run(input, rng, scratch) {
      const [seed, bytes] = untag(input as Uint8Array);
      await runCheckpoint(bytes, rng, scratch, seed);
    },
  },
  {
    name: 'meta',
    make: (rng) => mutatePickle(seedFile(rng.pick(CHECKPOINT_SEEDS), 'meta.pkl'), rng),
    async run(input, _rng, scratch) {
      const path = join(scratch, 'meta.pkl');
      writeFileSync(path, input as Uint8Array);
      const vocab = await readMetaPkl(path);
      new CharTokenizer(vocab); // what a loader does with it next
    },
  },
  {
    name: 'api',
    make: () => null,
    async run(_input, rng) {
      await randomCall(rng);
    },
  },
  {
    name: 'lifecycle',
    make: () => null,
    async run(_input, rng) {
      await lifecycleChaos(rng);
    },
  },
];

export function targetNamed(name: string): FuzzTarget {
  const target = TARGETS.find((t) => t.name === name);
  if (target === undefined) throw new Error(`no fuzz target ${JSON.stringify(name)}; there are ${TARGETS.map((t) => t.name).join(', ')}`);
  return target;
}

export function makeScratch(): string {
  return mkdtempSync(join(tmpdir(), 'microgpt-fuzz-'));
}

// ---- API arguments ------------------------------------------------------------------------------

const CONFIG: ModelConfig = { vocabSize: 8, blockSize: 8, nLayer: 2, nHead: 2, nEmbd: 8, bias: true };
const VOCAB = ['a', 'b', 'c', 'd', 'e', 'f', 'g', '\n'];

function trap(): object {
  return new Proxy({}, { get: () => { throw new FuzzTrap(); }, has: () => { throw new FuzzTrap(); }, ownKeys: () => { throw new FuzzTrap(); } });
}

/** Any value at all, biased to the edges. */
function anyValue(rng: FuzzRng, depth = 0): unknown {
  switch (rng.below(depth > 1 ? 20 : 24)) {
    case 0: return undefined;
    case 1: return null;
    case 2: return rng.chance(0.5);
    case 3: return rng.pick([0, -0, -1, 1, 2, 0.5, -0.5, 255, 256, 1024, 65536, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 53)]);
    case 4: return rng.pick([NaN, Infinity, -Infinity, 1e308, 5e-324, Number.EPSILON]);
    case 5: return rng.pick(['', 'a', 'ab', 'abc\n', 'ZZZ', '\u0000', '\ud800', '😀', 'a'.repeat(5000), '\n'.repeat(3)]);
    case 6: return rng.pick([10n, -1n, 2n ** 64n]);
    case 7: return Symbol('fuzz');
    case 8: return () => 1;
    case 9: return rng.pick([new Int32Array([0, 1, 2]), new Float32Array(3), new Uint8Array(2), new Int32Array(0), new Float64Array([1, 2])]);
    case 10: return rng.pick([AbortSignal.abort(), new AbortController().signal, AbortSignal.timeout(1)]);
    case 11: return trap();
    case 12: return new Date(0);
    case 13: return { length: rng.pick([NaN, -1, 1e12, 3, 2 ** 53]) };
    case 14: return Object.create(null);
    case 15: return new Map();
    case 16: return rng.pick([[], [0], [0, 1, 2], [-1], [1.5], ['a'], [null], new Array(3)]);
    case 17: return rng.pick(['js', 'native', 'cuda', 'auto', 'f16', 'f32', 'drop', 'error', 'val', 'all']);
    case 18: return rng.below(8);
    case 19: return rng.pick(VOCAB).repeat(1 + rng.below(20));
    case 20: return [anyValue(rng, depth + 1), anyValue(rng, depth + 1)];
    default: {
      const o: Record<string, unknown> = {};
      for (let k = rng.below(3); k > 0; k--) o[rng.pick(['length', 'maxNewTokens', 'wte', 'layers', 'signal', 'x'])] = anyValue(rng, depth + 1);
      return o;
    }
  }
}

/** An options object: known keys with plausible or hostile values, sometimes not an object at all. */
function options(rng: FuzzRng, plausible: Record<string, () => unknown>): unknown {
  if (rng.chance(0.1)) return anyValue(rng);
  const o: Record<string, unknown> = {};
  for (const [key, make] of Object.entries(plausible)) {
    if (rng.chance(0.4)) o[key] = rng.chance(0.7) ? make() : anyValue(rng);
  }
  if (rng.chance(0.05)) o[rng.pick(['x', 'maxNewToken', '__proto__', 'constructor', ''])] = anyValue(rng); // keys no option has
  return o;
}

function generateOptions(rng: FuzzRng): unknown {
  const o = options(rng, {
    maxNewTokens: () => rng.below(40),
    temperature: () => rng.pick([0, 0.5, 1, 2, 100]),
    topK: () => rng.pick([null, 1, 3, 100]),
    topP: () => rng.pick([0.1, 0.9, 1]),
    seed: () => rng.u32(),
    stop: () => rng.pick(['a', ['b', 'c'], '\n', []]),
    signal: () => (rng.chance(0.5) ? AbortSignal.timeout(rng.below(5)) : AbortSignal.abort(new FuzzTrap())),
    unknownCharacters: () => rng.pick(['drop', 'error']),
    numSamples: () => 1 + rng.below(4),
  });
  // Keep a valid case quick: these are checked by the boundary tests at their limits already.
  if (typeof o === 'object' && o !== null && !(o instanceof Map)) {
    const r = o as Record<string, unknown>;
    if (typeof r['maxNewTokens'] === 'number' && r['maxNewTokens'] > 64) r['maxNewTokens'] = 64;
    if (typeof r['numSamples'] === 'number' && r['numSamples'] > 8) r['numSamples'] = 8;
  }
  return o;
}

function prompt(rng: FuzzRng): unknown {
  return rng.chance(0.8) ? Array.from({ length: 1 + rng.below(20) }, () => rng.pick(VOCAB)).join('') : anyValue(rng);
}

const models = new Map<BackendName, Promise<Model>>();
function sharedModel(backend: BackendName): Promise<Model> {
  let model = models.get(backend);
  if (model === undefined) {
    model = createModel(CONFIG, randomTestWeights(CONFIG, 5), VOCAB, { backend });
    models.set(backend, model);
  }
  return model;
}

/** A weights object with one field hurt. */
function hurtWeights(rng: FuzzRng, config: ModelConfig): unknown {
  const w = randomTestWeights(config, 6) as unknown as Record<string, unknown>;
  if (rng.chance(0.2)) return w;
  const layers = (w['layers'] as Record<string, unknown>[]).map((l) => ({ ...l }));
  const hurt = (o: Record<string, unknown>, key: string) => {
    const v = o[key];
    o[key] = rng.chance(0.5) && v instanceof Float32Array ? v.subarray(rng.below(v.length + 1)) : anyValue(rng);
  };
  if (rng.chance(0.5)) hurt(w, rng.pick(['wte', 'wpe', 'lnfWeight', 'lnfBias', 'layers']));
  else if (layers.length > 0) hurt(layers[rng.below(layers.length)] as Record<string, unknown>, rng.pick(['ln1Weight', 'attnWeight', 'attnBias', 'mlpFcWeight', 'mlpProjWeight']));
  return w['layers'] === undefined || !Array.isArray(w['layers']) ? w : { ...w, layers };
}

async function randomCall(rng: FuzzRng): Promise<void> {
  const backend = rng.pick(BACKENDS);
  const model = await sharedModel(backend);
  const call = rng.below(13);
  switch (call) {
    case 0: await model.generate(prompt(rng) as string, generateOptions(rng) as never); return;
    case 1: await model.generateMany(prompt(rng) as string, generateOptions(rng) as never); return;
    case 2: {
      const stream = model.stream(prompt(rng) as string, generateOptions(rng) as never);
      const keep = rng.below(10);
      let seen = 0;
      for await (const _ of stream) if (++seen >= keep) break; // leaving early must free the session
      return;
    }
    case 3: await model.logits(rng.chance(0.6) ? Array.from({ length: rng.below(10) }, () => rng.below(9) - (rng.chance(0.05) ? 1 : 0)) : (anyValue(rng) as number[])); return;
    case 4: model.encode(prompt(rng) as string, options(rng, { unknown: () => rng.pick(['drop', 'error']) }) as never); return;
    case 5: model.decode(rng.chance(0.5) ? Array.from({ length: rng.below(10) }, () => rng.below(9)) : (anyValue(rng) as number[])); return;
    case 6: await evaluate(model, rng.chance(0.5) ? VOCAB.join('').repeat(1 + rng.below(4)) : (anyValue(rng) as string), options(rng, { split: () => rng.pick(['all', 'val']), signal: () => AbortSignal.abort(new FuzzTrap()), onProgress: () => () => undefined }) as never); return;
    case 7: {
      const config = rng.chance(0.5) ? CONFIG : { ...CONFIG, [rng.pick(['vocabSize', 'blockSize', 'nLayer', 'nHead', 'nEmbd', 'bias'])]: anyValue(rng) };
      const vocab = rng.chance(0.8) ? VOCAB : anyValue(rng);
      const m = await createModel(config as ModelConfig, hurtWeights(rng, CONFIG) as never, vocab as string[], options(rng, { backend: () => rng.pick(BACKENDS), threads: () => 1 + rng.below(4), precision: () => rng.pick(['auto', 'f32', 'f16']) }) as never);
      m.dispose();
      return;
    }
    case 8: {
      const source = rng.pick(['default', '', '/', '/dev/null', '/dev/zero', fixture('models', 'tiny-bias'), fixture('models'), 'no/such/file', fixture('models', 'tiny-bias', 'meta.pkl')]);
      const m = await loadModel(rng.chance(0.9) ? source : (anyValue(rng) as string), options(rng, { backend: () => rng.pick(BACKENDS), threads: () => rng.pick([1, 2, 0, 2000]), precision: () => rng.pick(['auto', 'f16']), meta: () => fixture('models', 'tiny-bias', 'meta.pkl') }) as never);
      m.dispose();
      return;
    }
    case 9: new CharTokenizer(rng.chance(0.5) ? [...VOCAB.slice(0, rng.below(8)), anyValue(rng)] as string[] : (anyValue(rng) as string[])); return;
    case 10: validateConfig(rng.chance(0.3) ? anyValue(rng) : { ...CONFIG, [rng.pick(['vocabSize', 'blockSize', 'nLayer', 'nHead', 'nEmbd', 'bias'])]: anyValue(rng) }); return;
    case 11: {
      const sampler = new Sampler(rng.chance(0.7) ? 8 : (anyValue(rng) as number));
      const settings = { temperature: rng.pick([0, 0.8, 1]), topK: rng.pick([undefined, 1, 3]), topP: rng.pick([undefined, 0.5]) };
      sampler.sample(new Float32Array(8).map(() => rng.below(100) / 10), settings, new Rng(rng.chance(0.8) ? rng.below(1000) : (anyValue(rng) as number)).uniform());
      return;
    }
    default: {
      // A model of its own, disposed while a call may be in flight.
      const m = await createModel(CONFIG, randomTestWeights(CONFIG, 7), VOCAB, { backend });
      const pending = m.generate('ab', { maxNewTokens: rng.below(30), seed: 1 });
      if (rng.chance(0.5)) await new Promise((r) => setImmediate(r));
      m.dispose();
      await pending;
    }
  }
}

// ---- lifecycle chaos ----------------------------------------------------------------------------

/**
 * A native model with several generations, streams and logits calls in flight, disposed or
 * aborted at random moments: every promise must settle, with a result or a clean error.
 */
async function lifecycleChaos(rng: FuzzRng): Promise<void> {
  const backend = rng.pick(BACKENDS);
  const model = await createModel(CONFIG, randomTestWeights(CONFIG, 8), VOCAB, { backend, threads: 1 + rng.below(3) });
  const controller = new AbortController();
  const work: Promise<unknown>[] = [];
  for (let k = 1 + rng.below(6); k > 0; k--) {
    const o = { maxNewTokens: rng.below(3 * CONFIG.blockSize), seed: rng.u32(), ...(rng.chance(0.3) ? { signal: controller.signal } : {}) };
    switch (rng.below(4)) {
      case 0: work.push(model.generate('ab', o)); break;
      case 1: work.push(model.generateMany('a', { ...o, numSamples: 1 + rng.below(4) })); break;
      case 2: work.push((async () => { for await (const _ of model.stream('b', o)) if (rng.chance(0.1)) break; })()); break;
      default: work.push(model.logits(Array.from({ length: 1 + rng.below(8) }, () => rng.below(8))));
    }
  }
  const settled = Promise.allSettled(work);
  for (let steps = rng.below(4); steps > 0; steps--) await new Promise((r) => (rng.chance(0.5) ? setImmediate(r) : setTimeout(r, rng.below(3))));
  if (rng.chance(0.5)) controller.abort(new FuzzTrap());
  if (rng.chance(0.7)) model.dispose();
  for (const outcome of await settled) {
    if (outcome.status === 'rejected') {
      const why = judge(outcome.reason);
      if (why !== null) throw outcome.reason;
    }
  }
  model.dispose();
}
