#!/usr/bin/env node
/**
 * The `microgpt` command. Results go to stdout, diagnostics to stderr; a failure prints one line
 * naming the problem and exits with code 1.
 */
import { readFileSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { availableBackends } from './backends/index.js';
import { cudaStatus, type CudaStatus } from './backends/cuda.js';
import { nativeBinary, type NativeBinary } from './backends/native/index.js';
import type { BackendChoice, BackendName, PrecisionChoice } from './backends/types.js';
import { benchChartSvg } from './bench/chart.js';
import { formatBenchReport } from './bench/report.js';
import { runBench } from './bench/run.js';
import { MicroGPTError } from './errors.js';
import type { GenerationResult } from './generate.js';
import { readSafetensors, writeSafetensors, type WritableDType } from './formats/safetensors.js';
import { contextPolicyLosses, evaluate, MAX_EVAL_CHARACTERS } from './evaluate.js';
import { positionLossChartSvg } from './position-loss-chart.js';
import { DEFAULT_MODEL, loadModel, readModelFile, type LoadOptions } from './load.js';
import { parameterCount } from './config.js';
import { startServer } from './serve/server.js';
import { SERVE_DEFAULTS } from './serve/handler.js';

const USAGE = `Usage: microgpt <command> [options]

Commands:
  generate  [--model PATH] [--meta meta.pkl] [--prompt TEXT] [--max-new-tokens N]
            [--temperature T] [--top-k K] [--top-p P] [--seed S] [--num-samples N]
            [--stop TEXT]... [--context slide|shift] [--keep K]
            [--backend auto|js|native|cuda] [--device N] [--threads N] [--precision auto|f32|f16]
            [--json]
            Prints the continuation of the prompt (without the prompt). --context: past
            blockSize, slide (default) re-runs the last blockSize tokens for every token,
            exactly as nanoGPT; shift keeps the last K tokens (--keep, default blockSize/2)
            and decodes from the cache until the window is full again: faster, less context.
  info      [--model PATH] [--meta meta.pkl] [--json]
            Describes a model: config, parameters, vocabulary, format.
  convert   [--model PATH] [--meta meta.pkl] --out FILE.safetensors [--dtype f32|f16|bf16]
            Writes a nanoGPT checkpoint (or any model) as microgpt's safetensors.
  serve     [--model PATH] [--host 127.0.0.1] [--port 8080] [--backend B] [--device N]
            [--threads N] [--precision P] [--max-concurrent N] [--api-key KEY] [--model-id ID]
            An OpenAI-compatible HTTP server: POST /v1/completions, GET /v1/models, /health,
            /metrics (Prometheus) and the playground at /. --api-key (or MICROGPT_API_KEY)
            requires Authorization: Bearer KEY on /v1/. SIGINT/SIGTERM: stop accepting, let
            generations finish (10 s), exit 0.
  bench     [--shape default|char-10M|gpt2-124M]... [--backend B]... [--device N] [--runs N]
            [--threads N] [--json] [--chart FILE.svg]
            Tokens/s of decode and prefill, GEMM GFLOP/s, per engine, random weights.
  eval      [--model PATH] [--meta meta.pkl] --data FILE [--split all|val] [--backend B]
            [--device N] [--threads N] [--precision P] [--json] [--by-position] [--chart FILE.svg]
            [--keep K]
            Mean cross-entropy and perplexity of the model over a text file, in
            non-overlapping windows of blockSize (--split val: nanoGPT's last 10%).
            --by-position prints JSON with lossByPosition (entry n-1: the mean loss from a
            context of n tokens) and the loss each --context policy sees past the window
            (shift with --keep K, default blockSize/2); --chart draws that curve as SVG.

PATH is a .safetensors file, a nanoGPT ckpt.pt, or a nanoGPT out_dir; without --model,
the Shakespeare model bundled with microgpt ('default').
--precision: how the engine keeps the weight matrices. auto (default): float16 when that
changes no weight (float16 checkpoints, the bundled model), else float32; f16 rounds float32
weights (half the memory traffic per token, logits within about 1e-3).
--device: the CUDA device to run on (its index, default 0; 'microgpt info' lists them), with
--backend cuda, or auto when it picks CUDA.
Run 'microgpt <command> --help' for a command's options.`;

class UsageError extends Error {}

type Options = ParseArgsConfig['options'];

const modelOptions: Options = {
  model: { type: 'string' },
  meta: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

/** The options of commands that run a model: which engine (and CUDA device), with how many threads, in what precision. */
const engineFlags: Options = {
  backend: { type: 'string' },
  device: { type: 'string' },
  threads: { type: 'string' },
  precision: { type: 'string' },
};

function engineOptions(values: Record<string, unknown>): LoadOptions {
  return {
    ...optionalString(values, 'meta'),
    ...(typeof values['backend'] === 'string' ? { backend: values['backend'] as BackendChoice } : {}),
    ...optionalNumber(values, 'device', 'device'),
    ...optionalNumber(values, 'threads', 'threads'),
    ...(typeof values['precision'] === 'string' ? { precision: values['precision'] as PrecisionChoice } : {}),
  };
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'generate':
      return generate(rest);
    case 'info':
      return info(rest);
    case 'convert':
      return convert(rest);
    case 'eval':
      return evalCommand(rest);
    case 'bench':
      return benchCommand(rest);
    case 'serve':
      return serveCommand(rest);
    case '--version':
    case '-v':
      process.stdout.write(`${packageVersion()}\n`);
      return;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return;
    default:
      throw new UsageError(`unknown command "${command}" (commands: generate, info, convert, eval, bench, serve; see microgpt --help)`);
  }
}

async function generate(args: string[]): Promise<void> {
  const { values } = parse(args, {
    ...modelOptions,
    prompt: { type: 'string' },
    'max-new-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-k': { type: 'string' },
    'top-p': { type: 'string' },
    seed: { type: 'string' },
    'num-samples': { type: 'string' },
    stop: { type: 'string', multiple: true },
    context: { type: 'string' },
    keep: { type: 'string' },
    ...engineFlags,
    json: { type: 'boolean' },
  });
  if (values['help'] === true) return void process.stdout.write(`${USAGE}\n`);
  const context = values['context'] ?? 'slide';
  if (context !== 'slide' && context !== 'shift') throw new UsageError(`--context must be slide or shift, got "${String(context)}"`);
  if (values['keep'] !== undefined && context !== 'shift') throw new UsageError('--keep is the number of tokens --context shift keeps; add --context shift');
  const model = await loadModel(modelPath(values), {
    ...engineOptions(values),
  });
  try {
    const prompt = typeof values['prompt'] === 'string' ? values['prompt'] : '\n';
    const options = {
      ...optionalNumber(values, 'max-new-tokens', 'maxNewTokens'),
      ...optionalNumber(values, 'temperature', 'temperature'),
      ...optionalNumber(values, 'top-k', 'topK'),
      ...optionalNumber(values, 'top-p', 'topP'),
      ...optionalNumber(values, 'seed', 'seed'),
      ...(Array.isArray(values['stop']) ? { stop: values['stop'] as string[] } : {}),
      context,
      ...optionalNumber(values, 'keep', 'keep'),
    } as const;
    const numSamples = optionalNumber(values, 'num-samples', 'numSamples').numSamples ?? 1;
    const json = values['json'] === true;
    const started = process.hrtime.bigint();
    let results: GenerationResult[];
    if (numSamples === 1 && !json) {
      // Print the text as it is generated.
      const stream = model.stream(prompt, options);
      for (;;) {
        const step = await stream.next();
        if (step.done === true) {
          results = [step.value];
          break;
        }
        process.stdout.write(step.value);
      }
    } else {
      results = await model.completeMany(prompt, { ...options, numSamples });
      if (!json) process.stdout.write(results.map((r) => r.text).join('\n---------------\n'));
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    // Piped output is exactly the continuation; a terminal also gets the line ended.
    if (!json && process.stdout.isTTY) process.stdout.write('\n');
    const tokens = results.reduce((n, r) => n + r.tokens, 0);
    const tokensPerSecond = seconds > 0 ? tokens / seconds : 0;
    if (json) {
      const first = results[0] as GenerationResult;
      const out = {
        text: first.text,
        tokens,
        finishReason: first.finishReason,
        backend: model.backend,
        precision: model.precision,
        tokensPerSecond: Math.round(tokensPerSecond * 10) / 10,
        seconds: Math.round(seconds * 1e4) / 1e4,
        ...(numSamples > 1 ? { samples: results } : {}),
      };
      process.stdout.write(`${JSON.stringify(out)}\n`);
    } else {
      process.stderr.write(`microgpt: ${tokens} tokens in ${seconds.toFixed(2)} s (${tokensPerSecond.toFixed(1)} tokens/s, ${model.backend} backend, ${model.precision} weights)\n`);
    }
  } finally {
    model.dispose();
  }
}

async function info(args: string[]): Promise<void> {
  const { values } = parse(args, { ...modelOptions, json: { type: 'boolean' } });
  if (values['help'] === true) return void process.stdout.write(`${USAGE}\n`);
  const file = await readModelFile(modelPath(values), optionalString(values, 'meta').meta);
  const c = file.config;
  const description = {
    path: file.info.path,
    format: file.info.format,
    storedDType: file.info.storedDType,
    config: c,
    parameters: parameterCount(c),
    vocabulary: file.vocab.join(''),
    vocabularySize: file.vocab.length,
    metadata: file.info.metadata,
    backends: availableBackends(),
    native: nativeBinary(),
    cuda: cudaStatus(),
  };
  if (values['json'] === true) {
    process.stdout.write(`${JSON.stringify(description, null, 2)}\n`);
    return;
  }
  const lines = [
    `model       ${description.path}`,
    `format      ${description.format} (${description.storedDType} weights, computed in float32)`,
    `shape       ${c.nLayer} layers, ${c.nHead} heads, ${c.nEmbd} wide, block ${c.blockSize}, vocab ${c.vocabSize}, bias ${c.bias}`,
    `parameters  ${description.parameters.toLocaleString('en-US')}`,
    `vocabulary  ${JSON.stringify(description.vocabulary)} (${description.vocabularySize} characters)`,
    ...Object.entries(description.metadata).map(([k, v]) => `${k.padEnd(11)} ${v.length > 200 ? `${v.slice(0, 200)}…` : v}`),
    `backends    ${description.backends.map((b) => (b.available ? b.name : `${b.name} (unavailable: ${b.reason})`)).join(', ')}`,
    `native      ${describeBinary(description.native)}`,
    `cuda        ${describeCuda(description.cuda)}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** The CUDA module and its devices in one line, or why there are none. */
function describeCuda(s: CudaStatus | null): string {
  if (s === null) return 'no native binary (see backends)';
  const devices = s.devices.map(
    (d) => `${d.index}: ${d.name}, ${(d.memoryBytes / 2 ** 30).toFixed(0)} GiB, compute capability ${d.computeCapability}${d.usable ? '' : ' (too old)'}`,
  );
  if (devices.length > 0) return devices.join('; ');
  return s.reason ?? 'no device';
}

/** The native binary in one line: its path and the instruction set it runs, or why there is none. */
function describeBinary(b: NativeBinary): string {
  if (b.path === null) return 'no binary (see backends)';
  if (b.isa === null) return `${b.path} (unusable: see backends)`;
  return `${b.path} (${b.isa}; runs ${b.supported.join(', ')})`;
}

async function convert(args: string[]): Promise<void> {
  const { values } = parse(args, { ...modelOptions, out: { type: 'string' }, dtype: { type: 'string' } });
  if (values['help'] === true) return void process.stdout.write(`${USAGE}\n`);
  const out = values['out'];
  if (typeof out !== 'string' || out.length === 0) throw new UsageError('convert needs --out FILE.safetensors');
  const dtypeName = typeof values['dtype'] === 'string' ? values['dtype'].toLowerCase() : 'f32';
  const dtypes: Record<string, WritableDType> = { f32: 'F32', float32: 'F32', f16: 'F16', float16: 'F16', bf16: 'BF16', bfloat16: 'BF16' };
  const dtype = dtypes[dtypeName];
  if (dtype === undefined) throw new UsageError(`--dtype must be f32, f16 or bf16, got "${values['dtype']}"`);
  const file = await readModelFile(modelPath(values), optionalString(values, 'meta').meta);
  await writeSafetensors(out, {
    config: file.config,
    weights: file.weights,
    vocab: file.vocab,
    dtype,
    metadata: { ...file.info.metadata, convertedFrom: file.info.format },
  });
  const check = await readSafetensors(out); // a file we cannot read back is not written
  process.stderr.write(`microgpt: wrote ${out} (${check.storedDType}, ${parameterCount(check.config).toLocaleString('en-US')} parameters)\n`);
}

async function evalCommand(args: string[]): Promise<void> {
  const { values } = parse(args, {
    ...modelOptions,
    data: { type: 'string' },
    split: { type: 'string' },
    ...engineFlags,
    json: { type: 'boolean' },
    'by-position': { type: 'boolean' },
    chart: { type: 'string' },
    keep: { type: 'string' },
  });
  if (values['help'] === true) return void process.stdout.write(`${USAGE}\n`);
  const data = values['data'];
  if (typeof data !== 'string' || data.length === 0) throw new UsageError('eval needs --data FILE (a UTF-8 text file)');
  const split = values['split'] ?? 'all';
  if (split !== 'all' && split !== 'val') throw new UsageError(`--split must be all or val, got "${String(split)}"`);
  const chart = values['chart'];
  if (chart !== undefined && (typeof chart !== 'string' || chart.length === 0)) throw new UsageError('--chart needs a file name (FILE.svg)');
  const byPosition = values['by-position'] === true || chart !== undefined;
  if (values['keep'] !== undefined && !byPosition) throw new UsageError('--keep marks the shift policy on the loss by position: add --by-position or --chart');
  const size = (await stat(data).catch(() => {
    throw new UsageError(`cannot read --data ${data}: no such file`);
  })).size;
  if (size > MAX_EVAL_CHARACTERS * 4) throw new UsageError(`--data ${data} is ${size} bytes; eval reads at most ${MAX_EVAL_CHARACTERS * 4}`);
  const text = await readFile(data, 'utf8');
  const model = await loadModel(modelPath(values), {
    ...engineOptions(values),
  });
  try {
    const B = model.config.blockSize;
    const keep = optionalNumber(values, 'keep', 'keep').keep ?? Math.floor(B / 2);
    if (byPosition) {
      if (B < 2) throw new UsageError(`the model's blockSize is ${B}: there are no context policies to compare`);
      if (!Number.isInteger(keep) || keep < 1 || keep > B - 1) throw new UsageError(`--keep must be an integer from 1 to ${B - 1}, got ${keep}`);
    }
    const started = process.hrtime.bigint();
    const result = await evaluate(model, text, { split, byPosition });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const curve = result.lossByPosition;
    if (typeof chart === 'string' && curve !== undefined) {
      const subtitle = `${basename(model.source.path)}, ${basename(data)} (split ${split}), ${result.windows} windows of ${B}, ${model.backend} engine`;
      await writeFile(chart, positionLossChartSvg({ lossByPosition: curve, keep, subtitle }));
    }
    if (values['json'] === true || values['by-position'] === true) {
      const policies = curve === undefined ? {} : { blockSize: B, contextPolicies: contextPolicyLosses(curve, keep) };
      process.stdout.write(`${JSON.stringify({ ...result, ...policies, split, backend: model.backend, seconds: Math.round(seconds * 1e3) / 1e3 })}\n`);
    } else {
      process.stdout.write(
        `loss ${result.loss.toFixed(4)}  perplexity ${result.perplexity.toFixed(3)}  (${result.tokens} tokens in ${result.windows} windows of ${model.config.blockSize}, split ${split})\n`,
      );
      if (curve !== undefined) {
        const p = contextPolicyLosses(curve, keep);
        process.stdout.write(`past the window: --context slide sees loss ${p.slide.toFixed(4)} (context ${B}), --context shift --keep ${keep} ${p.shift.loss.toFixed(4)} (contexts ${keep}..${B})\n`);
      }
    }
  } finally {
    model.dispose();
  }
}

async function benchCommand(args: string[]): Promise<void> {
  const { values } = parse(args, {
    shape: { type: 'string', multiple: true },
    backend: { type: 'string', multiple: true },
    device: { type: 'string' },
    runs: { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'boolean' },
    chart: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values['help'] === true) return void process.stdout.write(`${USAGE}\n`);
  const report = await runBench({
    ...(Array.isArray(values['shape']) ? { shapes: values['shape'] as string[] } : {}),
    ...(Array.isArray(values['backend']) ? { backends: values['backend'] as BackendName[] } : {}),
    ...optionalNumber(values, 'device', 'device'),
    ...optionalNumber(values, 'runs', 'runs'),
    ...optionalNumber(values, 'threads', 'threads'),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(values['json'] === true ? `${JSON.stringify(report, null, 2)}\n` : `${formatBenchReport(report)}\n`);
  if (typeof values['chart'] === 'string') await writeFile(values['chart'], benchChartSvg(report));
}

async function serveCommand(args: string[]): Promise<void> {
  const { values } = parse(args, {
    ...modelOptions,
    ...engineFlags,
    host: { type: 'string' },
    port: { type: 'string' },
    'max-concurrent': { type: 'string' },
    'api-key': { type: 'string' },
    'model-id': { type: 'string' },
  });
  if (values['help'] === true) return void process.stdout.write(`${USAGE}\n`);
  const port = optionalNumber(values, 'port', 'port').port ?? 8080;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be an integer from 0 to 65535, got ${port}`);
  const maxConcurrent = optionalNumber(values, 'max-concurrent', 'n').n ?? SERVE_DEFAULTS.maxConcurrent;
  if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) throw new UsageError(`--max-concurrent must be a positive integer, got ${maxConcurrent}`);
  const apiKey = typeof values['api-key'] === 'string' ? values['api-key'] : process.env['MICROGPT_API_KEY'];
  const running = await startServer({
    model: modelPath(values),
    load: engineOptions(values),
    host: typeof values['host'] === 'string' ? values['host'] : '127.0.0.1',
    port,
    maxConcurrent,
    ...(apiKey !== undefined && apiKey !== '' ? { apiKey } : {}),
    ...(typeof values['model-id'] === 'string' ? { modelId: values['model-id'] } : {}),
  });
  const m = running.model;
  process.stderr.write(`microgpt: serving ${m.source.path} (${m.backend} backend, ${m.precision} weights) at ${running.url}\n`);
  process.stdout.write(`${running.url}\n`);
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      process.stderr.write(`microgpt: ${signal}: finishing the generations in flight, then exiting\n`);
      running.close().then(resolve, resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}

function parse(args: string[], options: Options): { values: Record<string, unknown> } {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (error) {
    throw new UsageError((error as Error).message.split('\n')[0] ?? 'bad arguments');
  }
}

/** --model, or the bundled model when it is left out. */
function modelPath(values: Record<string, unknown>): string {
  const model = values['model'];
  if (model === undefined) return DEFAULT_MODEL;
  if (typeof model !== 'string' || model.length === 0) throw new UsageError('--model needs a path (a .safetensors file, a ckpt.pt or a nanoGPT out_dir)');
  return model;
}

function optionalString(values: Record<string, unknown>, name: string): { [k: string]: string } {
  const v = values[name];
  return typeof v === 'string' ? { [name]: v } : {};
}

function optionalNumber<K extends string>(values: Record<string, unknown>, flag: string, key: K): { [P in K]?: number } {
  const raw = values[flag];
  if (typeof raw !== 'string') return {};
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${flag} must be a number, got "${raw}"`);
  return { [key]: n } as { [P in K]?: number };
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

main(process.argv.slice(2)).catch((error: unknown) => {
  let message: string;
  if (error instanceof MicroGPTError || error instanceof UsageError) message = error.message;
  else if (error instanceof Error && 'code' in error && typeof error.code === 'string' && error.code.startsWith('E')) message = error.message;
  else if (error instanceof Error) message = `internal error: ${error.message} (please report it; MICROGPT_DEBUG=1 prints the stack)`;
  else message = String(error);
  if (process.env['MICROGPT_DEBUG'] === '1' && error instanceof Error) process.stderr.write(`${error.stack}\n`);
  process.stderr.write(`microgpt: ${message.split('\n')[0]}\n`);
  process.exitCode = 1;
});
