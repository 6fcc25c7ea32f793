import { MicroGPTError, quote } from './errors.js';

/** The hyper-parameters of a nanoGPT model, named as in nanoGPT's GPTConfig but camelCased. */
export interface ModelConfig {
  /** Number of tokens (characters) in the vocabulary. */
  readonly vocabSize: number;
  /** Longest context the model attends over; also the number of learned positions. */
  readonly blockSize: number;
  readonly nLayer: number;
  readonly nHead: number;
  /** Width of the residual stream; a multiple of nHead. */
  readonly nEmbd: number;
  /** Whether the Linear and LayerNorm layers carry biases (nanoGPT's `bias`). */
  readonly bias: boolean;
}

/**
 * Bounds on a config from any source, so that a small hostile or mistyped file cannot ask for
 * absurd memory or compute: what nanoGPT-class models need, with room (gpt2-xl is 48 layers,
 * 25 heads, 1600 wide, block 1024; nanoGPT's shakespeare_char is 6 x 6 x 384, block 256). The
 * native engine checks the same table (a test holds the two equal).
 */
export const CONFIG_LIMITS = {
  vocabSize: 1_114_112, // every Unicode code point
  blockSize: 4_096,
  nLayer: 64,
  nHead: 64,
  nEmbd: 8_192,
  /** nEmbd / nHead. */
  headSize: 512,
  /** Float32 parameters; 2^31 keeps every tensor index inside a JS number and a Float32Array. */
  parameters: 2 ** 31,
  /**
   * nLayer x blockSize x nEmbd: a full session's KV cache holds twice this many floats (2 GiB at
   * the limit), whatever the size of the file.
   */
  layerPositionWidth: 2 ** 28,
  /**
   * nLayer x nHead x blockSize^2, the attention scores of a full-window pass (twice what its causal
   * half computes). Attention is the one cost that does not grow with the weights, and heads of
   * a handful of channels spend it worst: at this limit a full-window pass of a 2 MB file with
   * heads of width 1 took about 5 s on a 2-vCPU Xeon VM (2026-11-30); gpt2-xl needs a quarter of it.
   */
  attentionScores: 2 ** 32,
} as const;

const LIMITED_FIELDS = ['vocabSize', 'blockSize', 'nLayer', 'nHead', 'nEmbd'] as const;

/** Checks a config from any source (checkpoint, safetensors metadata, user) and returns a clean copy. */
export function validateConfig(raw: unknown, source = 'model config'): ModelConfig {
  if (typeof raw !== 'object' || raw === null) {
    throw new MicroGPTError('ERR_INVALID_CONFIG', `${source}: expected an object, got ${describe(raw)}`);
  }
  const record = raw as Record<string, unknown>;
  const out: Record<string, number | boolean> = {};
  for (const field of LIMITED_FIELDS) {
    const value = record[field];
    const limit = CONFIG_LIMITS[field];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > limit) {
      throw new MicroGPTError(
        'ERR_INVALID_CONFIG',
        `${source}: ${field} must be an integer from 1 to ${limit}, got ${describe(value)}`,
      );
    }
    out[field] = value;
  }
  const bias = record['bias'];
  if (typeof bias !== 'boolean') {
    throw new MicroGPTError('ERR_INVALID_CONFIG', `${source}: bias must be true or false, got ${describe(bias)}`);
  }
  const config: ModelConfig = {
    vocabSize: out['vocabSize'] as number,
    blockSize: out['blockSize'] as number,
    nLayer: out['nLayer'] as number,
    nHead: out['nHead'] as number,
    nEmbd: out['nEmbd'] as number,
    bias,
  };
  if (config.nEmbd % config.nHead !== 0) {
    throw new MicroGPTError(
      'ERR_INVALID_CONFIG',
      `${source}: nEmbd (${config.nEmbd}) must be a multiple of nHead (${config.nHead})`,
    );
  }
  const headSize = config.nEmbd / config.nHead;
  if (headSize > CONFIG_LIMITS.headSize) {
    throw new MicroGPTError(
      'ERR_INVALID_CONFIG',
      `${source}: head size nEmbd / nHead (${headSize}) must be at most ${CONFIG_LIMITS.headSize}`,
    );
  }
  const layerPositionWidth = config.nLayer * config.blockSize * config.nEmbd;
  if (layerPositionWidth > CONFIG_LIMITS.layerPositionWidth) {
    throw new MicroGPTError(
      'ERR_INVALID_CONFIG',
      `${source}: nLayer x blockSize x nEmbd (${layerPositionWidth}) must be at most ${CONFIG_LIMITS.layerPositionWidth}` +
        " (a session's KV cache holds twice that many floats)",
    );
  }
  const attentionScores = config.nLayer * config.nHead * config.blockSize * config.blockSize;
  if (attentionScores > CONFIG_LIMITS.attentionScores) {
    throw new MicroGPTError(
      'ERR_INVALID_CONFIG',
      `${source}: nLayer x nHead x blockSize^2 (${attentionScores}) must be at most ${CONFIG_LIMITS.attentionScores}` +
        ' (the attention scores of a full-window pass)',
    );
  }
  const params = parameterCount(config);
  if (params > CONFIG_LIMITS.parameters) {
    throw new MicroGPTError(
      'ERR_INVALID_CONFIG',
      `${source}: ${params} parameters is more than this library supports (${CONFIG_LIMITS.parameters})`,
    );
  }
  return config;
}

/**
 * Parameter count with the tied lm_head counted once, as nanoGPT's get_num_params(non_embedding=False).
 */
export function parameterCount(c: ModelConfig): number {
  const C = c.nEmbd;
  const b = c.bias ? 1 : 0;
  const layerNorm = C + b * C;
  const perLayer =
    2 * layerNorm + // ln_1, ln_2
    3 * C * C + b * 3 * C + // attn.c_attn
    C * C + b * C + // attn.c_proj
    4 * C * C + b * 4 * C + // mlp.c_fc
    4 * C * C + b * C; // mlp.c_proj
  return c.vocabSize * C + c.blockSize * C + c.nLayer * perLayer + layerNorm;
}

/** nanoGPT's `model_args` dict (snake_case) to our config. Extra keys such as `dropout` are ignored. */
export function configFromModelArgs(args: Record<string, unknown>, source: string): ModelConfig {
  return validateConfig(
    {
      vocabSize: args['vocab_size'],
      blockSize: args['block_size'],
      nLayer: args['n_layer'],
      nHead: args['n_head'],
      nEmbd: args['n_embd'],
      bias: args['bias'],
    },
    source,
  );
}

/** A caller's or a file's value as it goes into a one-line message: strings quoted and cut short. */
export function describe(value: unknown): string {
  if (typeof value === 'string') return quote(value, 40);
  if (typeof value === 'bigint') return `${value}n`;
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'symbol') return 'a symbol';
  return String(value);
}
