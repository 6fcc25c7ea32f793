import { describe, type ModelConfig } from './config.js';
import { badCheckpoint, invalidArgument, quote } from './errors.js';
import { roundToFloat16 } from './formats/dtype.js';

/** A dense row-major float32 tensor. */
export interface Tensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/**
 * The learned parameters of one transformer block, in PyTorch's layout: a Linear weight is
 * [outFeatures, inFeatures] and computes y = x W^T + b. Biases are null when config.bias is false.
 */
export interface LayerWeights {
  readonly ln1Weight: Float32Array; // (C)
  readonly ln1Bias: Float32Array | null; // (C)
  readonly attnWeight: Float32Array; // (3C, C): rows are q, then k, then v
  readonly attnBias: Float32Array | null; // (3C)
  readonly attnProjWeight: Float32Array; // (C, C)
  readonly attnProjBias: Float32Array | null; // (C)
  readonly ln2Weight: Float32Array; // (C)
  readonly ln2Bias: Float32Array | null; // (C)
  readonly mlpFcWeight: Float32Array; // (4C, C)
  readonly mlpFcBias: Float32Array | null; // (4C)
  readonly mlpProjWeight: Float32Array; // (C, 4C)
  readonly mlpProjBias: Float32Array | null; // (C)
}

/** All parameters of a model. lm_head is tied to the token embedding, so it is `wte`. */
export interface ModelWeights {
  readonly wte: Float32Array; // (vocabSize, C)
  readonly wpe: Float32Array; // (blockSize, C)
  readonly layers: readonly LayerWeights[];
  readonly lnfWeight: Float32Array; // (C)
  readonly lnfBias: Float32Array | null; // (C)
}

/** The matrices: wte (which is also the tied lm_head) and every Linear weight. */
function matrices(w: ModelWeights): Float32Array[] {
  return [w.wte, ...w.layers.flatMap((l) => LINEAR_FIELDS.map((f) => l[f] as Float32Array))];
}

/**
 * The weights with every matrix rounded to the nearest IEEE float16, as an engine keeping them in
 * float16 computes with; the other tensors are shared, not copied.
 */
export function roundMatricesToFloat16(w: ModelWeights): ModelWeights {
  return {
    ...w,
    wte: roundToFloat16(w.wte),
    layers: w.layers.map((l) => {
      const rounded: Record<string, Float32Array | null> = { ...l };
      for (const f of LINEAR_FIELDS) rounded[f] = roundToFloat16(l[f] as Float32Array);
      return rounded as unknown as LayerWeights;
    }),
  };
}

/**
 * Whether every matrix value is a float16 value (rounding to float16 would change nothing): what
 * precision 'auto' keeps in float16. The same test as the native engine's f16_exact.
 */
export function matricesFloat16Exact(w: ModelWeights): boolean {
  return matrices(w).every((a) => {
    const bits = new Uint32Array(a.buffer, a.byteOffset, a.length);
    for (let i = 0; i < bits.length; i++) {
      const x = (bits[i] as number) & 0x7fffffff;
      if (x === 0) continue;
      const e = (x >>> 23) - 127;
      if (e > 15 || e < -24) return false; // beyond float16's range: inf, NaN and float32 subnormals too
      // float16 keeps 10 mantissa bits, fewer below 2^-14 (its subnormals are multiples of 2^-24).
      const dropped = e >= -14 ? 13 : 13 + (-14 - e);
      if ((x & ((1 << dropped) - 1)) !== 0) return false;
    }
    return true;
  });
}

/** Whether some matrix holds a value float16 cannot hold (|w| >= 65520, or not finite). */
export function matricesBeyondFloat16(w: ModelWeights): boolean {
  return matrices(w).some((a) => a.some((v) => !(Math.abs(v) < 65520)));
}

/**
 * A transformer block's tensors in state_dict order: the LayerWeights field, the nanoGPT name
 * under `transformer.h.<i>.`, the shape for width C (a Linear weight is [out, in]), and whether
 * it is a bias (absent when config.bias is false).
 */
const LAYER_TENSORS: readonly {
  readonly field: keyof LayerWeights;
  readonly name: string;
  readonly shape: (C: number) => number[];
  readonly bias: boolean;
}[] = [
  { field: 'ln1Weight', name: 'ln_1.weight', shape: (C) => [C], bias: false },
  { field: 'ln1Bias', name: 'ln_1.bias', shape: (C) => [C], bias: true },
  { field: 'attnWeight', name: 'attn.c_attn.weight', shape: (C) => [3 * C, C], bias: false },
  { field: 'attnBias', name: 'attn.c_attn.bias', shape: (C) => [3 * C], bias: true },
  { field: 'attnProjWeight', name: 'attn.c_proj.weight', shape: (C) => [C, C], bias: false },
  { field: 'attnProjBias', name: 'attn.c_proj.bias', shape: (C) => [C], bias: true },
  { field: 'ln2Weight', name: 'ln_2.weight', shape: (C) => [C], bias: false },
  { field: 'ln2Bias', name: 'ln_2.bias', shape: (C) => [C], bias: true },
  { field: 'mlpFcWeight', name: 'mlp.c_fc.weight', shape: (C) => [4 * C, C], bias: false },
  { field: 'mlpFcBias', name: 'mlp.c_fc.bias', shape: (C) => [4 * C], bias: true },
  { field: 'mlpProjWeight', name: 'mlp.c_proj.weight', shape: (C) => [C, 4 * C], bias: false },
  { field: 'mlpProjBias', name: 'mlp.c_proj.bias', shape: (C) => [C], bias: true },
];

/** The Linear weights of a block (the matrices besides wte). */
const LINEAR_FIELDS: readonly (keyof LayerWeights)[] = LAYER_TENSORS.filter((t) => t.shape(1).length === 2).map((t) => t.field);

/** One tensor of the layout: its name and shape, and where ModelWeights keeps it. */
export interface TensorSlot {
  /** nanoGPT's state_dict key. */
  readonly name: string;
  /** PyTorch's layout: a Linear weight is [outFeatures, inFeatures]. */
  readonly shape: number[];
  /** Its transformer block, or null for wte, wpe and ln_f. */
  readonly layer: number | null;
  /** The field of ModelWeights (layer null) or of LayerWeights that holds it. */
  readonly field: string;
  /** False for a bias of a model without biases: the field must then be null. */
  readonly present: boolean;
}

/** Every slot of `config`, absent biases included, in state_dict order. */
function tensorSlots(config: ModelConfig): TensorSlot[] {
  const C = config.nEmbd;
  const slots: TensorSlot[] = [
    { name: 'transformer.wte.weight', shape: [config.vocabSize, C], layer: null, field: 'wte', present: true },
    { name: 'transformer.wpe.weight', shape: [config.blockSize, C], layer: null, field: 'wpe', present: true },
  ];
  for (let i = 0; i < config.nLayer; i++) {
    for (const t of LAYER_TENSORS) {
      slots.push({ name: `transformer.h.${i}.${t.name}`, shape: t.shape(C), layer: i, field: t.field, present: config.bias || !t.bias });
    }
  }
  slots.push({ name: 'transformer.ln_f.weight', shape: [C], layer: null, field: 'lnfWeight', present: true });
  slots.push({ name: 'transformer.ln_f.bias', shape: [C], layer: null, field: 'lnfBias', present: config.bias });
  return slots;
}

/**
 * The model's tensors in nanoGPT's state_dict order, with their names and shapes: the single
 * definition of the parameters. Loaders check against it, writers follow it, and the native
 * engine takes its weights in this order, checked by name and shape against its own copy of
 * this table (native/config.h, tensor_layout; a test holds the two equal).
 */
export function tensorLayout(config: ModelConfig): TensorSlot[] {
  return tensorSlots(config).filter((s) => s.present);
}

/** The tensors a checkpoint must hold: tensorLayout as a name → shape map, in the same order. */
export function expectedTensors(config: ModelConfig): Map<string, number[]> {
  return new Map(tensorLayout(config).map((t) => [t.name, t.shape]));
}

/**
 * Checks a name → tensor map against the config (every tensor present, right shape, finite, no
 * strangers) and arranges it for the backends. `source` names the file in error messages.
 */
export function assembleWeights(config: ModelConfig, tensors: ReadonlyMap<string, Tensor>, source: string): ModelWeights {
  const expected = expectedTensors(config);
  for (const name of tensors.keys()) {
    if (!expected.has(name)) {
      throw badCheckpoint(source, `unexpected tensor ${quote(name)} for a model with ${describeConfig(config)}`);
    }
  }
  const get = (name: string): Float32Array => {
    const shape = expected.get(name);
    const tensor = tensors.get(name);
    if (shape === undefined) throw new Error(`internal: ${name} is not a parameter`);
    if (tensor === undefined) {
      throw badCheckpoint(source, `missing tensor ${quote(name)} (expected shape [${shape.join(', ')}])`);
    }
    if (!sameShape(tensor.shape, shape)) {
      throw badCheckpoint(
        source,
        `tensor ${quote(name)} has shape [${tensor.shape.join(', ')}], expected [${shape.join(', ')}] for ${describeConfig(config)}`,
      );
    }
    const size = shape.reduce((a, b) => a * b, 1);
    if (tensor.data.length !== size) {
      throw badCheckpoint(source, `tensor ${quote(name)} holds ${tensor.data.length} values, not the ${size} of its shape`);
    }
    const bad = firstNonFinite(tensor.data);
    if (bad >= 0) {
      throw badCheckpoint(source, `tensor ${quote(name)} holds ${tensor.data[bad]} at flat index ${bad}; weights must be finite`);
    }
    return tensor.data;
  };
  const top: Record<string, Float32Array | null> = {};
  const layers: Record<string, Float32Array | null>[] = Array.from({ length: config.nLayer }, () => ({}));
  for (const slot of tensorSlots(config)) {
    const data = slot.present ? get(slot.name) : null;
    if (slot.layer === null) top[slot.field] = data;
    else (layers[slot.layer] as Record<string, Float32Array | null>)[slot.field] = data;
  }
  return { ...top, layers } as unknown as ModelWeights;
}

/**
 * The inverse of assembleWeights: nanoGPT names and shapes, in state_dict order, for writers and
 * createModel. `weights` may come from a caller, so every field is checked (a Float32Array of
 * exactly its shape's size, null for a bias exactly when config.bias is false) and an error names
 * the field.
 */
export function namedTensors(config: ModelConfig, weights: ModelWeights): Map<string, Tensor> {
  const flat = new Map<string, Float32Array | null>();
  const fieldOf = new Map<string, string>();
  const record = (w: unknown, what: string): Record<string, unknown> => {
    if (typeof w !== 'object' || w === null) throw invalidArgument(`${what} must be an object, got ${describe(w)}`);
    return w as Record<string, unknown>;
  };
  const put = (name: string, field: string, value: unknown) => {
    flat.set(name, value as Float32Array | null);
    fieldOf.set(name, field);
  };
  const w = record(weights, 'weights');
  const layers = w['layers'];
  if (!Array.isArray(layers) || layers.length !== config.nLayer) {
    throw invalidArgument(`weights.layers must be an array of nLayer (${config.nLayer}) layers, got ${Array.isArray(layers) ? `${layers.length}` : describe(layers)}`);
  }
  const layerRecords = layers.map((layer: unknown, i) => record(layer, `weights.layers[${i}]`));
  for (const slot of tensorSlots(config)) {
    if (slot.layer === null) put(slot.name, `weights.${slot.field}`, w[slot.field]);
    else put(slot.name, `weights.layers[${slot.layer}].${slot.field}`, (layerRecords[slot.layer] as Record<string, unknown>)[slot.field]);
  }
  const expected = expectedTensors(config);
  for (const [name, data] of flat) {
    if (!expected.has(name) && data !== null && data !== undefined) {
      throw invalidArgument(`${fieldOf.get(name) as string} must be null for a model without biases (config.bias is false)`);
    }
  }
  const out = new Map<string, Tensor>();
  for (const [name, shape] of expected) {
    const data = flat.get(name);
    const size = shape.reduce((a, b) => a * b, 1);
    if (!(data instanceof Float32Array) || data.length !== size) {
      const got = data instanceof Float32Array ? `a Float32Array of ${data.length}` : describe(data);
      throw invalidArgument(`${fieldOf.get(name) as string} must be a Float32Array of ${size} elements (shape [${shape.join(', ')}]), got ${got}`);
    }
    out.set(name, { shape, data });
  }
  return out;
}

export function describeConfig(c: ModelConfig): string {
  return `nLayer=${c.nLayer} nHead=${c.nHead} nEmbd=${c.nEmbd} blockSize=${c.blockSize} vocabSize=${c.vocabSize} bias=${c.bias}`;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) {
    const v = data[i] as number;
    if (v - v !== 0) return i; // NaN and ±Infinity
  }
  return -1;
}
