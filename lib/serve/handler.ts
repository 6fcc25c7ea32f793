/**
 * The HTTP request handler `(req, res)`: OpenAI's completions and models endpoints, health,
 * Prometheus metrics and the playground's files. It mounts in node:http, Express or Fastify
 * (README, "Serving"). Each request's generations run on the shared model, so concurrent
 * requests meet in the native engine's batched passes; a bounded number generate at once and a
 * bounded queue waits; the rest get 429.
 */
import { createHash, randomInt, randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { basename, dirname, extname } from 'node:path';
import { describe } from '../config.js';
import { invalidArgument } from '../errors.js';
import type { GenerateOptions, GenerationResult, TokenStep } from '../generate.js';
import type { Model } from '../model.js';
import { COMPLETION_LIMITS, parseCompletionRequest, type CompletionRequest } from './completions.js';
import { ApiError, toApiError } from './errors.js';
import { ServeMetrics } from './metrics.js';
import { endEventStream, sendEvent, startEventStream } from './sse.js';
import { PLAYGROUND_DIR, playgroundFile } from './static.js';

export interface HandlerOptions {
  /** The id clients pass as `model` (default: the model file's name without extension, e.g. "default"). */
  readonly modelId?: string;
  /** Required as `Authorization: Bearer <key>` on /v1/ routes when set. */
  readonly apiKey?: string;
  /** Requests generating at once (default 64); each may hold up to 16 choices. */
  readonly maxConcurrent?: number;
  /** Requests waiting for a slot before new ones get 429 (default 4 × maxConcurrent). */
  readonly maxQueue?: number;
  /** Where failures the client does not see (engine errors, their stacks) go; default stderr. */
  readonly log?: (line: string) => void;
  /** The playground's folder (default: playground/ of the package); null serves none. */
  readonly playgroundDir?: URL | null;
}

/** The handler, with what a server needs to run it and shut it down. */
export interface MicroGPTHandler {
  (req: IncomingMessage, res: ServerResponse, next?: unknown): void;
  readonly metrics: ServeMetrics;
  /** Requests generating now, and waiting for a slot. */
  readonly inFlight: number;
  readonly queued: number;
  /** Resolves once the model is loaded (rejects if loading failed). */
  readonly ready: Promise<Model>;
  /** Refuses new completions (503) from now on; resolves when none is generating or queued. */
  drain(): Promise<void>;
  /** Aborts every generation still running (their streams end). */
  abortAll(): void;
}

export const SERVE_DEFAULTS = { maxConcurrent: 64, queueFactor: 4 } as const;

/** Routes and their methods (anything else on a known route is 405). */
const ROUTES: Record<string, string> = {
  '/v1/completions': 'POST',
  '/v1/models': 'GET',
  '/health': 'GET',
  '/metrics': 'GET',
  '/': 'GET',
};

export function createHandler(model: Model | Promise<Model>, options: HandlerOptions = {}): MicroGPTHandler {
  const maxConcurrent = positive('maxConcurrent', options.maxConcurrent ?? SERVE_DEFAULTS.maxConcurrent);
  const maxQueue = options.maxQueue ?? SERVE_DEFAULTS.queueFactor * maxConcurrent;
  if (!Number.isInteger(maxQueue) || maxQueue < 0) throw invalidArgument(`maxQueue must be a non-negative integer, got ${describe(maxQueue)}`);
  const log = options.log ?? ((line: string) => process.stderr.write(`microgpt serve: ${line}\n`));
  const playgroundDir = options.playgroundDir === undefined ? PLAYGROUND_DIR : options.playgroundDir;
  const keyDigest = options.apiKey === undefined || options.apiKey === '' ? null : sha256(options.apiKey);
  const metrics = new ServeMetrics();
  const created = Math.floor(Date.now() / 1000);

  let loaded: Model | null = null;
  let modelId = options.modelId ?? '';
  const ready = Promise.resolve(model).then((m) => {
    loaded = m;
    if (modelId === '') modelId = defaultModelId(m.source.path);
    metrics.setModel(m, modelId);
    return m;
  });
  ready.catch((error: unknown) => log(`the model failed to load: ${error instanceof Error ? error.message : String(error)}`));

  let running = 0;
  const waiting: { resolve: () => void; reject: (e: unknown) => void; signal: AbortSignal }[] = [];
  const controllers = new Set<AbortController>();
  let draining = false;
  let drained: (() => void) | null = null;
  const updateGauges = (): void => {
    metrics.inFlight.set(running);
    metrics.queueLength.set(waiting.length);
    if (draining && running === 0 && waiting.length === 0) drained?.();
  };

  /** Waits for a generation slot; 429 when the queue is full. */
  const acquire = async (signal: AbortSignal): Promise<void> => {
    if (running < maxConcurrent && waiting.length === 0) {
      running++;
      updateGauges();
      return;
    }
    if (waiting.length >= maxQueue) {
      throw new ApiError(429, `the server is busy: ${running} requests generating and ${waiting.length} waiting; retry shortly`, null, 'server_busy');
    }
    await new Promise<void>((resolve, reject) => {
      const entry = { resolve, reject, signal };
      waiting.push(entry);
      updateGauges();
      signal.addEventListener(
        'abort',
        () => {
          const at = waiting.indexOf(entry);
          if (at >= 0) {
            waiting.splice(at, 1);
            updateGauges();
            reject(signal.reason);
          }
        },
        { once: true },
      );
    });
  };
  const release = (): void => {
    const next = waiting.shift();
    if (next !== undefined) next.resolve(); // the slot passes on: running stays the same
    else running--;
    updateGauges();
  };

  const handler = ((req: IncomingMessage, res: ServerResponse): void => {
    const url = (req.url ?? '/').split('?')[0] as string;
    const route = url.startsWith('/playground/') ? '/playground/' : (url in ROUTES ? url : 'other');
    res.on('finish', () => metrics.requests.inc({ route, status: String(res.statusCode) }));
    serve(req, res, url).catch((error: unknown) => sendError(res, toApiError(error, log)));
  }) as MicroGPTHandler;

  async function serve(req: IncomingMessage, res: ServerResponse, url: string): Promise<void> {
    const method = req.method ?? 'GET';
    if (url.startsWith('/playground/')) {
      if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(res, 'GET');
      return sendFile(res, url.slice('/playground/'.length));
    }
    const allowed = ROUTES[url];
    if (allowed === undefined) throw new ApiError(404, `no route ${method} ${url.slice(0, 200)} (see /v1/completions, /v1/models, /health, /metrics)`, null, 'not_found');
    if (method !== allowed && !(allowed === 'GET' && method === 'HEAD')) throw methodNotAllowed(res, allowed);
    switch (url) {
      case '/health': {
        if (loaded === null) throw new ApiError(503, 'the model is loading', null, 'not_ready');
        return sendJson(res, 200, { status: draining ? 'draining' : 'ok', model: modelId, backend: loaded.backend });
      }
      case '/metrics': {
        const text = await metrics.registry.metrics();
        if (res.writableEnded) return;
        res.writeHead(200, { 'Content-Type': metrics.registry.contentType });
        res.end(text);
        return;
      }
      case '/':
        return sendFile(res, 'index.html');
    }
    authorize(req);
    const m = loaded ?? (await ready.catch(() => null));
    if (m === null) throw new ApiError(503, 'the model failed to load; see the server log', null, 'not_ready');
    if (url === '/v1/models') {
      return sendJson(res, 200, {
        object: 'list',
        data: [{ id: modelId, object: 'model', created, owned_by: 'microgpt', block_size: m.config.blockSize, vocab_size: m.config.vocabSize, backend: m.backend }],
      });
    }
    const body = await readJson(req);
    const request = parseCompletionRequest(body, modelId);
    if (draining) throw new ApiError(503, 'the server is shutting down; retry on another instance', null, 'shutting_down');
    return complete(m, request, req, res);
  }

  async function complete(m: Model, request: CompletionRequest, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const controller = new AbortController();
    const onClose = (): void => {
      if (!res.writableFinished) controller.abort(new Error('the client disconnected'));
    };
    res.on('close', onClose);
    req.on('error', onClose);
    controllers.add(controller);
    try {
      await acquire(controller.signal);
      try {
        await (request.stream ? streamCompletion(m, request, res, controller.signal) : wholeCompletion(m, request, res, controller.signal));
      } finally {
        release();
      }
    } catch (error) {
      if (controller.signal.aborted) {
        // The client is gone (or the server is stopping): nobody to answer; end what was started.
        if (res.headersSent) endEventStream(res);
        else if (!res.writableEnded) sendError(res, new ApiError(503, 'the generation was aborted: the server is shutting down', null, 'aborted'));
        return;
      }
      throw error;
    } finally {
      controllers.delete(controller);
      res.off('close', onClose);
      updateGauges();
    }
  }

  /** One choice: its generation, and the per-token facts the response asked for. */
  function runChoice(m: Model, request: CompletionRequest, prompt: string, sampleIndex: number, seed: number, signal: AbortSignal) {
    const options: GenerateOptions = {
      maxNewTokens: request.maxTokens,
      temperature: request.temperature,
      topK: request.topK,
      topP: request.topP,
      seed,
      stop: [...request.stop],
      signal,
    };
    const pending: TokenFacts[] = [];
    let last = 0;
    const started = performance.now();
    const wantFacts = request.logprobs !== null || request.distribution > 0;
    const observe = (step: TokenStep): void => {
      const now = performance.now();
      if (last === 0) metrics.timeToFirstToken.observe((now - started) / 1000);
      else metrics.interTokenLatency.observe((now - last) / 1000);
      last = now;
      metrics.tokens.inc();
      if (wantFacts) pending.push(tokenFacts(m, step, m.tokenizer.token(step.token), request.logprobs ?? 0, request.distribution));
    };
    const stream = m.streamObserved(prompt, options, sampleIndex, observe, wantFacts);
    /** The facts of the tokens making up `piece`, the text just released. */
    const take = (piece: string): TokenFacts[] => {
      const out: TokenFacts[] = [];
      let left = piece.length;
      while (left > 0 && pending.length > 0 && (pending[0] as TokenFacts).text.length <= left) {
        const t = pending.shift() as TokenFacts;
        left -= t.text.length;
        out.push(t);
      }
      return out;
    };
    return { stream, take };
  }

  async function wholeCompletion(m: Model, request: CompletionRequest, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const seed = request.seed ?? randomInt(0, 2 ** 48 - 1);
    const jobs: Promise<{ text: string; facts: TokenFacts[]; result: GenerationResult }>[] = [];
    request.prompts.forEach((prompt, p) => {
      for (let i = 0; i < request.n; i++) {
        jobs.push(
          (async () => {
            const { stream, take } = runChoice(m, request, prompt, i, seed, signal);
            let text = '';
            const facts: TokenFacts[] = [];
            for (;;) {
              const step = await stream.next();
              if (step.done === true) return { text, facts, result: step.value };
              text += step.value;
              facts.push(...take(step.value));
            }
          })(),
        );
      }
    });
    const done = await Promise.all(jobs);
    let completionTokens = 0;
    const choices = done.map(({ text, facts, result }, index) => {
      completionTokens += result.tokens;
      const prompt = request.prompts[Math.floor(index / request.n)] as string;
      return {
        text: request.echo ? prompt + text : text,
        index,
        logprobs: request.logprobs === null ? null : logprobsOf(facts, prompt.length),
        finish_reason: result.finishReason,
        ...(request.distribution > 0 ? { distribution: facts.map((f) => f.distribution ?? []) } : {}),
      };
    });
    sendJson(res, 200, {
      id: `cmpl-${randomUUID()}`,
      object: 'text_completion',
      created: Math.floor(Date.now() / 1000),
      model: modelId,
      choices,
      usage: usage(m, request, completionTokens),
    });
  }

  async function streamCompletion(m: Model, request: CompletionRequest, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const seed = request.seed ?? randomInt(0, 2 ** 48 - 1);
    const id = `cmpl-${randomUUID()}`;
    const createdAt = Math.floor(Date.now() / 1000);
    // Built once: a chunk is this prefix, the choice, and "]}" (one per token per stream).
    const prefix = JSON.stringify({ id, object: 'text_completion', created: createdAt, model: modelId }).slice(0, -1) + ',"choices":[';
    const chunk = (choice: Record<string, unknown>): string => `${prefix}${JSON.stringify(choice)}]}`;
    const plain = (text: string, index: number): string => `${prefix}{"text":${JSON.stringify(text)},"index":${index},"logprobs":null,"finish_reason":null}]}`;
    const wantFacts = request.logprobs !== null || request.distribution > 0;
    // Options are checked as the generations are created: a refusal is still a JSON 400.
    const runs = request.prompts.flatMap((prompt, p) =>
      Array.from({ length: request.n }, (_, i) => ({ index: p * request.n + i, prompt, ...runChoice(m, request, prompt, i, seed, signal) })),
    );
    startEventStream(res);
    let completionTokens = 0;
    let failure: unknown = null;
    await Promise.all(
      runs.map(async (run) => {
        const facts = (texts: TokenFacts[]): Record<string, unknown> => ({
          logprobs: request.logprobs === null ? null : logprobsOf(texts, run.prompt.length),
          ...(request.distribution > 0 ? { distribution: texts.map((f) => f.distribution ?? []) } : {}),
        });
        try {
          if (request.echo) await sendEvent(res, plain(run.prompt, run.index));
          let step = await run.stream.next();
          while (step.done !== true) {
            const piece = step.value;
            await sendEvent(res, wantFacts ? chunk({ text: piece, index: run.index, ...facts(run.take(piece)), finish_reason: null }) : plain(piece, run.index));
            step = await run.stream.next();
          }
          completionTokens += step.value.tokens;
          await sendEvent(res, chunk({ text: '', index: run.index, logprobs: null, finish_reason: step.value.finishReason }));
        } catch (error) {
          if (!signal.aborted && failure === null) failure = error;
          throw error;
        }
      }),
    ).catch(() => undefined);
    if (failure !== null) {
      // Headers are out: the error goes as an event, then the stream ends.
      await sendEvent(res, toApiError(failure, log).toJSON());
      endEventStream(res);
      return;
    }
    if (signal.aborted) throw signal.reason;
    if (request.includeUsage) {
      await sendEvent(res, { id, object: 'text_completion', created: createdAt, model: modelId, choices: [], usage: usage(m, request, completionTokens) });
    }
    endEventStream(res);
  }

  function usage(m: Model, request: CompletionRequest, completionTokens: number) {
    const promptTokens = request.prompts.reduce((n, p) => n + m.encode(p, { unknown: 'drop' }).length, 0);
    return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
  }

  function authorize(req: IncomingMessage): void {
    if (keyDigest === null) return;
    const header = req.headers.authorization;
    const given = typeof header === 'string' && header.startsWith('Bearer ') ? header.slice(7).trim() : '';
    // Equal-length digests: the comparison takes the same time whatever the key given.
    if (given === '' || !timingSafeEqual(sha256(given), keyDigest)) {
      throw new ApiError(401, given === '' ? 'an API key is required: send Authorization: Bearer <key>' : 'the API key is wrong', null, 'invalid_api_key');
    }
  }

  async function sendFile(res: ServerResponse, name: string): Promise<void> {
    if (playgroundDir === null) throw new ApiError(404, 'this server has no playground', null, 'not_found');
    const { body, contentType } = await playgroundFile(playgroundDir, name);
    if (res.writableEnded) return;
    res.writeHead(200, { 'Content-Type': contentType, 'Content-Length': body.length, 'Cache-Control': 'no-cache' });
    res.end(body);
  }

  Object.defineProperties(handler, {
    metrics: { value: metrics },
    inFlight: { get: () => running },
    queued: { get: () => waiting.length },
    ready: { value: ready },
  });
  handler.drain = (): Promise<void> => {
    draining = true;
    return new Promise<void>((resolve) => {
      drained = resolve;
      updateGauges();
    });
  };
  handler.abortAll = (): void => {
    for (const c of controllers) c.abort(new Error('the server is shutting down'));
  };
  return handler;
}

/** What the response says about one generated token. */
interface TokenFacts {
  readonly text: string;
  readonly logprob?: number;
  /** The chosen token and the most likely ones, by raw logprob. */
  readonly top?: Record<string, number>;
  readonly distribution?: { token: string; before: number; after: number }[];
}

/**
 * Logprobs are of the model's own distribution (softmax of the raw logits), before temperature,
 * top-k and top-p; `distribution` gives both that (`before`) and the draw's (`after`).
 */
function tokenFacts(m: Model, step: TokenStep, text: string, logprobs: number, distribution: number): TokenFacts {
  const logits = step.logits as Float32Array; // asked for (streamObserved's withLogits)
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if ((logits[i] as number) > max) max = logits[i] as number;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp((logits[i] as number) - max);
  const logZ = max + Math.log(sum);
  const want = Math.max(logprobs, distribution);
  const ranked = want === 0 ? [] : Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => (logits[b] as number) - (logits[a] as number) || a - b).slice(0, want);
  const top: Record<string, number> = {};
  for (const id of ranked.slice(0, logprobs)) top[m.tokenizer.token(id)] = (logits[id] as number) - logZ;
  top[text] = (logits[step.token] as number) - logZ;
  return {
    text,
    logprob: (logits[step.token] as number) - logZ,
    top,
    ...(distribution > 0
      ? {
          distribution: ranked.slice(0, distribution).map((id) => ({
            token: m.tokenizer.token(id),
            before: Math.exp((logits[id] as number) - logZ),
            after: step.sampler.drawnProbability(id),
          })),
        }
      : {}),
  };
}

/** OpenAI's completions logprobs object; text_offset counts from the start of the prompt. */
function logprobsOf(facts: readonly TokenFacts[], offset: number) {
  const textOffset: number[] = [];
  for (const f of facts) {
    textOffset.push(offset);
    offset += f.text.length;
  }
  return {
    tokens: facts.map((f) => f.text),
    token_logprobs: facts.map((f) => f.logprob ?? null),
    top_logprobs: facts.map((f) => f.top ?? null),
    text_offset: textOffset,
  };
}

function methodNotAllowed(res: ServerResponse, allowed: string): ApiError {
  if (!res.headersSent) res.setHeader('Allow', allowed === 'GET' ? 'GET, HEAD' : allowed);
  return new ApiError(405, `method not allowed; use ${allowed}`, null, 'method_not_allowed');
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  // Express (express.json()) or another framework may have parsed the body already.
  const parsed = (req as { body?: unknown }).body;
  if (parsed !== undefined && typeof parsed === 'object' && parsed !== null && !Buffer.isBuffer(parsed)) return parsed;
  if (req.readableEnded) {
    throw new ApiError(400, 'the request body was read before this handler; pass it parsed as req.body', null, 'body_consumed');
  }
  const limit = COMPLETION_LIMITS.bodyBytes;
  const tooLarge = (): ApiError => new ApiError(413, `the request body is over ${limit} bytes`, null, 'body_too_large');
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size <= limit) return void chunks.push(chunk);
      // Answer now; the rest of the body is read and dropped, and the connection closed after.
      req.off('data', onData);
      req.resume();
      reject(tooLarge());
    };
    req.on('data', onData);
    req.once('end', resolve);
    req.once('error', reject);
  });
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new ApiError(400, 'the request body is not valid JSON', null, 'invalid_json');
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.writableEnded || res.destroyed) return;
  const text = JSON.stringify(body);
  if (res.headersSent) return void res.end();
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

export function sendError(res: ServerResponse, error: ApiError): void {
  if (res.headersSent) {
    // A stream already started: the error is an event, then the stream ends.
    if (!res.writableEnded && !res.destroyed) res.end(`data: ${JSON.stringify(error.toJSON())}\n\ndata: [DONE]\n\n`);
    return;
  }
  const headers: Record<string, string> = {};
  if (error.status === 429) headers['Retry-After'] = '1';
  if (error.status === 401) headers['WWW-Authenticate'] = 'Bearer';
  if (error.status === 413) headers['Connection'] = 'close';
  sendJson(res, error.status, error.toJSON(), headers);
}

/** The file's name without extension; a nanoGPT out_dir's name for its ckpt.pt. */
function defaultModelId(path: string): string {
  const name = basename(path, extname(path));
  return (name === 'ckpt' ? basename(dirname(path)) : name) || 'microgpt';
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function positive(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw invalidArgument(`${name} must be a positive integer, got ${describe(value)}`);
  return value;
}
