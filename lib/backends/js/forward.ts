import type { ModelConfig } from '../../config.js';
import type { ModelWeights } from '../../weights.js';
import { addInPlace, geluInPlace, layerNorm, linear } from './math.js';

/** Keys and values of every layer at absolute positions 0..length-1; each array is (blockSize, C). */
export interface KVCache {
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  length: number;
}

export function createKVCache(config: ModelConfig): KVCache {
  const size = config.blockSize * config.nEmbd;
  const keys: Float32Array[] = [];
  const values: Float32Array[] = [];
  for (let l = 0; l < config.nLayer; l++) {
    keys.push(new Float32Array(size));
    values.push(new Float32Array(size));
  }
  return { keys, values, length: 0 };
}

/**
 * The nanoGPT forward pass over `ids` placed at positions cache.length.., extending the cache.
 * Returns logits (T, vocabSize) of every new position when `allPositions`, else of the last one.
 */
export function forwardTokens(
  config: ModelConfig,
  w: ModelWeights,
  cache: KVCache,
  ids: Int32Array,
  allPositions: boolean,
): Float32Array {
  const { nEmbd: C, nHead, vocabSize } = config;
  const T = ids.length;
  const start = cache.length;
  const headSize = C / nHead;
  const scale = 1 / Math.sqrt(headSize);

  // Token plus position embedding: x (T, C), the residual stream.
  const x = new Float32Array(T * C);
  for (let t = 0; t < T; t++) {
    const tok = (ids[t] as number) * C;
    const pos = (start + t) * C;
    for (let i = 0; i < C; i++) x[t * C + i] = (w.wte[tok + i] as number) + (w.wpe[pos + i] as number);
  }

  const h = new Float32Array(T * C); // LayerNorm output
  const qkv = new Float32Array(T * 3 * C);
  const y = new Float32Array(T * C); // attention output before c_proj
  const proj = new Float32Array(T * C);
  const hidden = new Float32Array(T * 4 * C);
  const scores = new Float64Array(start + T);

  for (let l = 0; l < config.nLayer; l++) {
    const layer = w.layers[l]!;
    const keys = cache.keys[l]!;
    const values = cache.values[l]!;

    layerNorm(h, x, layer.ln1Weight, layer.ln1Bias, T, C);
    linear(qkv, h, layer.attnWeight, layer.attnBias, T, C, 3 * C);
    for (let t = 0; t < T; t++) {
      keys.set(qkv.subarray(t * 3 * C + C, t * 3 * C + 2 * C), (start + t) * C);
      values.set(qkv.subarray(t * 3 * C + 2 * C, t * 3 * C + 3 * C), (start + t) * C);
    }

    // Causal attention: the query at absolute position p sees keys 0..p.
    for (let t = 0; t < T; t++) {
      const p = start + t;
      for (let head = 0; head < nHead; head++) {
        const q = t * 3 * C + head * headSize;
        const hOff = head * headSize;
        let max = -Infinity;
        for (let j = 0; j <= p; j++) {
          let dot = 0;
          for (let d = 0; d < headSize; d++) dot += (qkv[q + d] as number) * (keys[j * C + hOff + d] as number);
          const s = dot * scale;
          scores[j] = s;
          if (s > max) max = s;
        }
        let sum = 0;
        for (let j = 0; j <= p; j++) {
          const e = Math.exp((scores[j] as number) - max);
          scores[j] = e;
          sum += e;
        }
        for (let d = 0; d < headSize; d++) {
          let acc = 0;
          for (let j = 0; j <= p; j++) acc += (scores[j] as number) * (values[j * C + hOff + d] as number);
          y[t * C + hOff + d] = acc / sum;
        }
      }
    }
    linear(proj, y, layer.attnProjWeight, layer.attnProjBias, T, C, C);
    addInPlace(x, proj);

    layerNorm(h, x, layer.ln2Weight, layer.ln2Bias, T, C);
    linear(hidden, h, layer.mlpFcWeight, layer.mlpFcBias, T, C, 4 * C);
    geluInPlace(hidden);
    linear(proj, hidden, layer.mlpProjWeight, layer.mlpProjBias, T, 4 * C, C);
    addInPlace(x, proj);
  }
  cache.length = start + T;

  // Final LayerNorm and the tied lm_head, only where logits are wanted.
  const first = allPositions ? 0 : T - 1;
  const rows = T - first;
  const last = x.subarray(first * C);
  const normed = new Float32Array(rows * C);
  layerNorm(normed, last, w.lnfWeight, w.lnfBias, rows, C);
  const logits = new Float32Array(rows * vocabSize);
  linear(logits, normed, w.wte, null, rows, C, vocabSize);
  return logits;
}
