import type { ModelConfig } from '../config.js';
import { Rng } from '../sampling/rng.js';
import type { LayerWeights, ModelWeights } from '../weights.js';

/** The model shapes the benchmark measures, with random weights. */
export const BENCH_SHAPES: Readonly<Record<string, ModelConfig>> = {
  // nanoGPT's train_shakespeare_char.py (bias=False is train.py's default).
  'char-10M': { vocabSize: 65, blockSize: 256, nLayer: 6, nHead: 6, nEmbd: 384, bias: false },
  // GPT-2 small as nanoGPT builds it (vocabulary padded to 50304).
  'gpt2-124M': { vocabSize: 50304, blockSize: 1024, nLayer: 12, nHead: 12, nEmbd: 768, bias: true },
};

/** The bundled model (`loadModel('default')`), measured with its trained weights beside the random shapes. */
export const BUNDLED_SHAPE = 'default';

/** Every shape `microgpt bench` knows, the bundled model first. */
export const BENCH_SHAPE_NAMES: readonly string[] = [BUNDLED_SHAPE, ...Object.keys(BENCH_SHAPES)];

/**
 * Random weights of nanoGPT's scale: uniform with standard deviation 0.02 (uniform rather than
 * normal only to be quick: 124M draws), LayerNorm weights 1, biases 0.
 */
export function randomWeights(config: ModelConfig, seed = 1): ModelWeights {
  const rng = new Rng(seed);
  const half = 0.02 * Math.sqrt(3);
  const random = (n: number): Float32Array => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = (rng.uniform() * 2 - 1) * half;
    return a;
  };
  const C = config.nEmbd;
  const ones = () => new Float32Array(C).fill(1);
  const zeros = (n: number) => (config.bias ? new Float32Array(n) : null);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayer; l++) {
    layers.push({
      ln1Weight: ones(),
      ln1Bias: zeros(C),
      attnWeight: random(3 * C * C),
      attnBias: zeros(3 * C),
      attnProjWeight: random(C * C),
      attnProjBias: zeros(C),
      ln2Weight: ones(),
      ln2Bias: zeros(C),
      mlpFcWeight: random(4 * C * C),
      mlpFcBias: zeros(4 * C),
      mlpProjWeight: random(4 * C * C),
      mlpProjBias: zeros(C),
    });
  }
  return { wte: random(config.vocabSize * C), wpe: random(config.blockSize * C), layers, lnfWeight: ones(), lnfBias: zeros(C) };
}

/**
 * A vocabulary of `size` distinct printable characters, for models without a real one: ASCII
 * first, then code points from U+00A1 on (below the surrogates for any size up to 54,000).
 */
export function syntheticVocab(size: number): string[] {
  const out: string[] = [];
  for (let cp = 0x21; cp < 0x7f && out.length < size; cp++) out.push(String.fromCodePoint(cp));
  for (let cp = 0xa1; out.length < size; cp++) out.push(String.fromCodePoint(cp));
  return out;
}
