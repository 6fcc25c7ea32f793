/**
 * The body of POST /v1/completions (OpenAI's legacy completions API plus our `top_k` and
 * `distribution`), checked and turned into generation options. Every refusal is an ApiError that
 * names the parameter.
 */
import { GENERATION_LIMITS, checkPrompt } from '../generate.js';
import { ApiError } from './errors.js';

export const COMPLETION_LIMITS = {
  /** Request body, bytes. */
  bodyBytes: 1_048_576,
  maxTokens: 4096,
  n: 8,
  /** Prompts in one request (an array prompt). */
  prompts: 8,
  /** Choices in one request: prompts × n. */
  choices: 16,
  logprobs: 5,
  distribution: 20,
} as const;

/** OpenAI's defaults, not the library's (temperature 1, no top-k, 16 tokens). */
export const COMPLETION_DEFAULTS = { maxTokens: 16, temperature: 1, topP: 1, n: 1 } as const;

export interface CompletionRequest {
  readonly model: string;
  readonly prompts: readonly string[];
  readonly maxTokens: number;
  readonly temperature: number;
  readonly topP: number;
  readonly topK: number | null;
  readonly n: number;
  readonly stop: readonly string[];
  /** Undefined: a random seed per request. */
  readonly seed: number | undefined;
  readonly stream: boolean;
  /** A final chunk with usage when streaming (stream_options.include_usage). */
  readonly includeUsage: boolean;
  /** Top alternatives per token, or null for no logprobs. */
  readonly logprobs: number | null;
  readonly echo: boolean;
  /** Most likely tokens per token with their before/after probabilities; 0 for none. */
  readonly distribution: number;
}

const SUPPORTED = new Set([
  'model', 'prompt', 'max_tokens', 'temperature', 'top_p', 'n', 'stop', 'seed', 'stream', 'stream_options',
  'logprobs', 'echo', 'user', 'top_k', 'distribution',
]);

/** OpenAI parameters we do not implement, accepted only at the value that means "off". */
const NEUTRAL: Record<string, (value: unknown, body: Record<string, unknown>) => boolean> = {
  suffix: (v) => v === null || v === '',
  best_of: (v, body) => v === null || v === 1 || v === (body['n'] ?? 1),
  presence_penalty: (v) => v === null || v === 0,
  frequency_penalty: (v) => v === null || v === 0,
  logit_bias: (v) => v === null || (typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 0),
};

export function parseCompletionRequest(body: unknown, modelId: string): CompletionRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new ApiError(400, 'the request body must be a JSON object', null);
  }
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) {
    if (SUPPORTED.has(key)) continue;
    const neutral = NEUTRAL[key];
    if (neutral === undefined) throw new ApiError(400, `unknown parameter ${key}: this server does not support it (remove it)`, key);
    if (!neutral(b[key], b)) throw new ApiError(400, `${key} is not supported by this server; leave it out (or at its default)`, key);
  }

  const model = b['model'];
  if (typeof model !== 'string' || model.length === 0) throw new ApiError(400, `model is required: a string, "${modelId}" (GET /v1/models lists it)`, 'model');
  if (model !== modelId) throw new ApiError(404, `model "${model.slice(0, 100)}" does not exist; this server runs "${modelId}"`, 'model', 'model_not_found');

  const prompts = promptList(b['prompt']);
  const maxTokens = integer(b, 'max_tokens', COMPLETION_DEFAULTS.maxTokens, 0, COMPLETION_LIMITS.maxTokens);
  const temperature = number(b, 'temperature', COMPLETION_DEFAULTS.temperature, 0, 2);
  const topP = number(b, 'top_p', COMPLETION_DEFAULTS.topP, 0, 1);
  if (topP === 0) throw new ApiError(400, 'top_p must be a number in (0, 1], got 0', 'top_p');
  const topK = b['top_k'] === null ? null : integer(b, 'top_k', null, 1, Number.MAX_SAFE_INTEGER);
  const n = integer(b, 'n', COMPLETION_DEFAULTS.n, 1, COMPLETION_LIMITS.n);
  if (prompts.length * n > COMPLETION_LIMITS.choices) {
    throw new ApiError(400, `prompts × n is ${prompts.length * n}; at most ${COMPLETION_LIMITS.choices} choices per request`, 'n');
  }
  const stop = stopList(b['stop']);
  const seed = integer(b, 'seed', null, 0, Number.MAX_SAFE_INTEGER) ?? undefined;
  const stream = boolean(b, 'stream');
  const includeUsage = streamOptions(b['stream_options'], stream);
  const logprobs = integer(b, 'logprobs', null, 0, COMPLETION_LIMITS.logprobs);
  const echo = boolean(b, 'echo');
  if (echo && logprobs !== null) {
    throw new ApiError(400, 'echo with logprobs is not supported (the prompt tokens would need logprobs); leave out one of them', 'echo');
  }
  const distribution = integer(b, 'distribution', 0, 0, COMPLETION_LIMITS.distribution) ?? 0;
  const user = b['user'];
  if (user !== undefined && user !== null && typeof user !== 'string') throw new ApiError(400, 'user must be a string', 'user');
  return { model, prompts, maxTokens: maxTokens ?? 0, temperature, topP, topK, n: n ?? 1, stop, seed, stream, includeUsage, logprobs, echo, distribution };
}

function promptList(prompt: unknown): string[] {
  if (prompt === undefined || prompt === null) throw new ApiError(400, 'prompt is required: a string or an array of strings', 'prompt');
  const list = typeof prompt === 'string' ? [prompt] : prompt;
  if (!Array.isArray(list) || list.length === 0 || list.length > COMPLETION_LIMITS.prompts) {
    throw new ApiError(400, `prompt must be a string or an array of 1 to ${COMPLETION_LIMITS.prompts} strings (token-id arrays are not supported)`, 'prompt');
  }
  for (const p of list) {
    if (typeof p !== 'string') throw new ApiError(400, 'prompt must be a string or an array of strings (token-id arrays are not supported)', 'prompt');
    checkPrompt(p); // the library's own bounds; its MicroGPTError becomes a 400 naming prompt
  }
  return list as string[];
}

function stopList(stop: unknown): string[] {
  if (stop === undefined || stop === null) return [];
  const list = typeof stop === 'string' ? [stop] : stop;
  if (!Array.isArray(list) || list.length > 4) throw new ApiError(400, 'stop must be a string or an array of up to 4 strings', 'stop');
  for (const s of list) {
    if (typeof s !== 'string' || s.length === 0 || s.length > GENERATION_LIMITS.stopStringLength) {
      throw new ApiError(400, `each stop string must be a non-empty string of at most ${GENERATION_LIMITS.stopStringLength} characters`, 'stop');
    }
  }
  return list as string[];
}

function streamOptions(value: unknown, stream: boolean): boolean {
  if (value === undefined || value === null) return false;
  if (!stream) throw new ApiError(400, 'stream_options is only allowed with stream: true', 'stream_options');
  if (typeof value !== 'object' || Array.isArray(value)) throw new ApiError(400, 'stream_options must be an object', 'stream_options');
  const o = value as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (key !== 'include_usage') throw new ApiError(400, `stream_options.${key} is not supported`, 'stream_options');
  }
  const include = o['include_usage'] ?? false;
  if (typeof include !== 'boolean') throw new ApiError(400, 'stream_options.include_usage must be a boolean', 'stream_options');
  return include;
}

function integer<D extends number | null>(b: Record<string, unknown>, name: string, fallback: D, min: number, max: number): number | D {
  const v = b[name];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ApiError(400, `${name} must be an integer from ${min} to ${max}, got ${shown(v)}`, name);
  }
  return v;
}

function number(b: Record<string, unknown>, name: string, fallback: number, min: number, max: number): number {
  const v = b[name];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    throw new ApiError(400, `${name} must be a number from ${min} to ${max}, got ${shown(v)}`, name);
  }
  return v;
}

function boolean(b: Record<string, unknown>, name: string): boolean {
  const v = b[name];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new ApiError(400, `${name} must be true or false, got ${shown(v)}`, name);
  return v;
}

function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}
