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
  return [w.wte, ...w.layers.flatMap((l) => [l.attnWeight, l.attnProjWeight, l.mlpFcWeight, l.mlpProjWeight])];
}

/**
 * The weights with every matrix rounded to the nearest IEEE float16, as an engine keeping them in
 * float16 computes with; the other tensors are shared, not copied.
 */
export function roundMatricesToFloat16(w: ModelWeights): ModelWeights {
  return {
    ...w,
    wte: roundToFloat16(w.wte),
    layers: w.layers.map((l) => ({
      ...l,
      attnWeight: roundToFloat16(l.attnWeight),
      attnProjWeight: roundToFloat16(l.attnProjWeight),
      mlpFcWeight: roundToFloat16(l.mlpFcWeight),
      mlpProjWeight: roundToFloat16(l.mlpProjWeight),
    })),
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
 * The tensors a checkpoint must hold, with nanoGPT's state_dict names and shapes. This list is
 * the single definition of the model's parameters: loaders check against it and writers follow it.
 */
export function expectedTensors(config: ModelConfig): Map<string, number[]> {
  const C = config.nEmbd;
  const out = new Map<string, number[]>();
  out.set('transformer.wte.weight', [config.vocabSize, C]);
  out.set('transformer.wpe.weight', [config.blockSize, C]);
  const linear = (name: string, outF: number, inF: number) => {
    out.set(`${name}.weight`, [outF, inF]);
    if (config.bias) out.set(`${name}.bias`, [outF]);
  };
  const layerNorm = (name: string) => {
    out.set(`${name}.weight`, [C]);
    if (config.bias) out.set(`${name}.bias`, [C]);
  };
  for (let i = 0; i < config.nLayer; i++) {
    const p = `transformer.h.${i}`;
    layerNorm(`${p}.ln_1`);
    linear(`${p}.attn.c_attn`, 3 * C, C);
    linear(`${p}.attn.c_proj`, C, C);
    layerNorm(`${p}.ln_2`);
    linear(`${p}.mlp.c_fc`, 4 * C, C);
    linear(`${p}.mlp.c_proj`, C, 4 * C);
  }
  layerNorm('transformer.ln_f');
  return out;
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
  const optional = (name: string): Float32Array | null => (config.bias ? get(name) : null);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < config.nLayer; i++) {
    const p = `transformer.h.${i}`;
    layers.push({
      ln1Weight: get(`${p}.ln_1.weight`),
      ln1Bias: optional(`${p}.ln_1.bias`),
      attnWeight: get(`${p}.attn.c_attn.weight`),
      attnBias: optional(`${p}.attn.c_attn.bias`),
      attnProjWeight: get(`${p}.attn.c_proj.weight`),
      attnProjBias: optional(`${p}.attn.c_proj.bias`),
      ln2Weight: get(`${p}.ln_2.weight`),
      ln2Bias: optional(`${p}.ln_2.bias`),
      mlpFcWeight: get(`${p}.mlp.c_fc.weight`),
      mlpFcBias: optional(`${p}.mlp.c_fc.bias`),
      mlpProjWeight: get(`${p}.mlp.c_proj.weight`),
      mlpProjBias: optional(`${p}.mlp.c_proj.bias`),
    });
  }
  return {
    wte: get('transformer.wte.weight'),
    wpe: get('transformer.wpe.weight'),
    layers,
    lnfWeight: get('transformer.ln_f.weight'),
    lnfBias: optional('transformer.ln_f.bias'),
  };
}

/** LayerWeights' fields and the nanoGPT names they hold, in state_dict order. */
const LAYER_FIELDS: readonly (readonly [keyof LayerWeights, string])[] = [
  ['ln1Weight', 'ln_1.weight'],
  ['ln1Bias', 'ln_1.bias'],
  ['attnWeight', 'attn.c_attn.weight'],
  ['attnBias', 'attn.c_attn.bias'],
  ['attnProjWeight', 'attn.c_proj.weight'],
  ['attnProjBias', 'attn.c_proj.bias'],
  ['ln2Weight', 'ln_2.weight'],
  ['ln2Bias', 'ln_2.bias'],
  ['mlpFcWeight', 'mlp.c_fc.weight'],
  ['mlpFcBias', 'mlp.c_fc.bias'],
  ['mlpProjWeight', 'mlp.c_proj.weight'],
  ['mlpProjBias', 'mlp.c_proj.bias'],
];

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
  put('transformer.wte.weight', 'weights.wte', w['wte']);
  put('transformer.wpe.weight', 'weights.wpe', w['wpe']);
  const layers = w['layers'];
  if (!Array.isArray(layers) || layers.length !== config.nLayer) {
    throw invalidArgument(`weights.layers must be an array of nLayer (${config.nLayer}) layers, got ${Array.isArray(layers) ? `${layers.length}` : describe(layers)}`);
  }
  layers.forEach((layer: unknown, i) => {
    const l = record(layer, `weights.layers[${i}]`);
    for (const [field, name] of LAYER_FIELDS) put(`transformer.h.${i}.${name}`, `weights.layers[${i}].${field}`, l[field]);
  });
  put('transformer.ln_f.weight', 'weights.lnfWeight', w['lnfWeight']);
  put('transformer.ln_f.bias', 'weights.lnfBias', w['lnfBias']);
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
