// The microgpt command, run as a user runs it: a separate process, stdout and stderr apart.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cudaUnavailableReason } from '../lib/backends/cuda.js';
import { loadAddon } from '../lib/backends/native/binding.js';
import { availableBackends, loadModel, readSafetensors } from '../lib/index.js';
import { ROOT, expected, fixture } from './helpers.js';

const CLI = join(ROOT, 'dist', 'lib', 'cli.js');
/** The engine 'auto' picks here: the first available in order of preference. */
const AUTO = availableBackends().find((b) => b.available)?.name;

function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A failed command: exit code 1 and one line on stderr naming the problem, no stack trace. */
function fails(message: RegExp, ...args: string[]): void {
  const r = run(...args);
  assert.equal(r.status, 1, `exit code for ${args.join(' ')}: ${r.stderr}`);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `stderr has ${lines.length} lines:\n${r.stderr}`);
  assert.match(lines[0]!, /^microgpt: /);
  assert.match(lines[0]!, message);
}

const e = expected('tiny-bias');
const modelDir = fixture('models', 'tiny-bias');
let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'microgpt-cli-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('microgpt generate', () => {
  test('prints only the continuation on stdout', () => {
    const r = run('generate', '--model', modelDir, '--prompt', e.greedy.prompt, '--temperature', '0', '--max-new-tokens', String(e.greedy.maxNewTokens));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, e.greedy.continuation);
    assert.match(r.stderr, new RegExp(`tokens/s, ${AUTO} backend`));
    const js = run('generate', '--backend', 'js', '--model', modelDir, '--prompt', e.greedy.prompt, '--temperature', '0', '--max-new-tokens', '20');
    assert.equal(js.stdout, e.greedy.continuation.slice(0, 20));
    assert.match(js.stderr, /tokens\/s, js backend/);
  });

  test('--precision picks how the weights are kept; a wrong value is a one-line error', () => {
    const args = ['generate', '--model', modelDir, '--prompt', 'ab', '--max-new-tokens', '5', '--temperature', '0', '--json'];
    for (const precision of ['f32', 'f16'] as const) {
      const r = run(...args, '--precision', precision);
      assert.equal(r.status, 0, r.stderr);
      assert.equal((JSON.parse(r.stdout) as { precision: string }).precision, precision);
    }
    fails(/precision must be 'auto', 'f32' or 'f16', got "f8"$/, 'generate', '--model', modelDir, '--precision', 'f8');
  });

  test('--json gives text, tokens, backend and speed in one object', () => {
    const s = e.sampled[0]!;
    const r = run('generate', '--model', join(modelDir, 'ckpt.pt'), '--meta', join(modelDir, 'meta.pkl'), '--prompt', e.greedy.prompt,
      '--seed', String(s.seed), '--temperature', String(s.temperature), '--top-k', String(s.topK), '--max-new-tokens', String(s.maxNewTokens), '--json');
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(out['text'], s.continuation);
    assert.equal(out['tokens'], s.maxNewTokens);
    assert.equal(out['backend'], AUTO);
    assert.equal(typeof out['tokensPerSecond'], 'number');
    assert.ok((out['tokensPerSecond'] as number) > 0);
  });

  test('--num-samples draws the seed streams of generateMany', () => {
    const s = e.sampled[0]!;
    const args = ['generate', '--model', modelDir, '--prompt', e.greedy.prompt, '--seed', String(s.seed), '--temperature', String(s.temperature),
      '--top-k', String(s.topK), '--max-new-tokens', String(s.samples.maxNewTokens), '--num-samples', '3'];
    const json = run(...args, '--json');
    assert.equal(json.status, 0, json.stderr);
    const out = JSON.parse(json.stdout) as { samples: { text: string }[] };
    assert.deepEqual(out.samples.map((x) => x.text), s.samples.continuations);
    const plain = run(...args);
    assert.equal(plain.stdout, s.samples.continuations.join('\n---------------\n'));
  });

  test('--stop ends the text before the stop string', () => {
    const stop = e.greedy.continuation.slice(10, 12);
    const r = run('generate', '--model', modelDir, '--prompt', e.greedy.prompt, '--temperature', '0', '--max-new-tokens', '40', '--stop', stop);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, e.greedy.continuation.slice(0, e.greedy.continuation.indexOf(stop)));
  });

  test('--context shift --keep K generates what the API does with those options', async () => {
    const options = { seed: 3, temperature: 0.9, maxNewTokens: 4 * e.config.blockSize, context: 'shift', keep: 5 } as const;
    const r = run('generate', '--model', modelDir, '--prompt', e.greedy.prompt, '--seed', '3', '--temperature', '0.9', '--max-new-tokens', String(options.maxNewTokens), '--context', 'shift', '--keep', '5');
    assert.equal(r.status, 0, r.stderr);
    const model = await loadModel(modelDir);
    assert.equal(r.stdout, await model.generate(e.greedy.prompt, options));
    assert.notEqual(r.stdout, await model.generate(e.greedy.prompt, { ...options, context: 'slide', keep: undefined }));
    model.dispose();
    fails(/--context must be slide or shift, got "wrap"$/, 'generate', '--model', modelDir, '--context', 'wrap');
    fails(/--keep is the number of tokens --context shift keeps; add --context shift$/, 'generate', '--model', modelDir, '--keep', '4');
    fails(/keep must be an integer from 1 to 15, got 16$/, 'generate', '--model', modelDir, '--context', 'shift', '--keep', '16');
  });

  test('errors are one line and exit code 1', () => {
    fails(/--model needs a path/, 'generate', '--model=', '--prompt', 'hi');
    fails(/cannot read model \/nonexistent\/model\.safetensors: no such file or directory/, 'generate', '--model', '/nonexistent/model.safetensors');
    fails(/temperature must be a number from 0 \(greedy\) to 100, got -1/, 'generate', '--model', modelDir, '--temperature=-1');
    fails(/--top-k must be a number, got "many"/, 'generate', '--model', modelDir, '--top-k', 'many');
    fails(/topK must be an integer from 1/, 'generate', '--model', modelDir, '--top-k', '0');
    fails(/maxNewTokens must be an integer from 0 to 1000000/, 'generate', '--model', modelDir, '--max-new-tokens', '1e12');
    fails(/Unknown option '--frobnicate'/, 'generate', '--model', modelDir, '--frobnicate');
    fails(/character 'Ω' \(U\+03A9\) at position 2 is not in the model's vocabulary/, 'generate', '--model', modelDir, '--prompt', 'abΩ');
    if (cudaUnavailableReason() !== null) fails(/backend 'cuda' is not available/, 'generate', '--model', modelDir, '--backend', 'cuda');
    fails(/--device must be a number, got "first"/, 'generate', '--model', modelDir, '--device', 'first');
    fails(/device must be a CUDA device's index \(an integer from 0\), got 1\.5/, 'generate', '--model', modelDir, '--device', '1.5');
    fails(/device selects a CUDA device: backend 'native' has none/, 'generate', '--model', modelDir, '--backend', 'native', '--device', '0');
    fails(/backend must be one of auto, js, native, cuda, got "gpu"/, 'generate', '--model', modelDir, '--backend', 'gpu');
    fails(/unknown command "frobnicate"/, 'frobnicate');
  });

  test('a corrupt model file is one line too', async () => {
    const path = join(dir, 'corrupt.safetensors');
    await writeFile(path, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 0x7b]));
    fails(/corrupt\.safetensors: the safetensors header is not valid UTF-8 JSON/, 'generate', '--model', path);
  });
});

describe('microgpt info', () => {
  test('--json describes config, parameters, vocabulary and format', () => {
    const r = run('info', '--model', modelDir, '--json');
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as Record<string, any>;
    assert.deepEqual(out['config'], e.config);
    assert.equal(out['parameters'], e.parameters);
    assert.equal(out['format'], 'nanogpt-checkpoint');
    assert.equal(out['storedDType'], 'F32');
    assert.equal(out['vocabularySize'], 65);
    assert.equal(out['metadata']['iterNum'], '300');
  });

  test('prints a readable summary', () => {
    const r = run('info', '--model', fixture('models', 'tiny-nobias-f16.safetensors'));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /format\s+safetensors \(F16 weights, computed in float32\)/);
    assert.match(r.stdout, /shape\s+3 layers, 3 heads, 36 wide, block 24, vocab 65, bias false/);
    assert.match(r.stdout, /parameters\s+50,112/);
  });

  /** info --json's native entry and its text line, run with `env` added. */
  function nativeInfo(env: Record<string, string>): { native: { path: string | null; isa: string | null; supported: string[] }; line: string } {
    const options = { encoding: 'utf8' as const, timeout: 60_000, env: { ...process.env, ...env } };
    const json = spawnSync(process.execPath, [CLI, 'info', '--model', modelDir, '--json'], options);
    assert.equal(json.status, 0, json.stderr);
    const text = spawnSync(process.execPath, [CLI, 'info', '--model', modelDir], options);
    assert.equal(text.status, 0, text.stderr);
    const line = text.stdout.split('\n').find((l) => l.startsWith('native '));
    assert.ok(line !== undefined, `no native line in:\n${text.stdout}`);
    return { native: (JSON.parse(json.stdout) as { native: ReturnType<typeof nativeInfo>['native'] }).native, line };
  }

  test('names the native binary in use, relative to the package, and its instruction set', () => {
    const load = loadAddon();
    assert.ok(load.addon !== null, `the native binary is expected here: ${load.reason}`);
    const { native, line } = nativeInfo({});
    // node-gyp-build's pick: an earlier build, or this platform's prebuild.
    assert.match(native.path ?? '', /^(build\/Release\/microgpt\.node|prebuilds\/[a-z0-9]+-[a-z0-9]+\/microgpt(\.(glibc|musl))?\.node)$/);
    assert.equal(join(ROOT, native.path!), load.path);
    assert.equal(native.isa, load.addon.cpu().best);
    assert.deepEqual(native.supported, load.addon.cpu().supported);
    assert.equal(line, `native      ${native.path} (${native.isa}; runs ${native.supported.join(', ')})`);
    // MICROGPT_ISA picks the kernels: info says which.
    assert.equal(nativeInfo({ MICROGPT_ISA: 'scalar' }).native.isa, 'scalar');
  });

  test('a prebuild outside the package (MICROGPT_PREBUILD) by its absolute path; none at all', () => {
    const load = loadAddon();
    assert.ok(load.path !== null, `the native binary is expected here: ${load.reason}`);
    const prebuild = join(dir, 'elsewhere', 'prebuilds', `${process.platform}-${process.arch}`, 'microgpt.node');
    mkdirSync(dirname(prebuild), { recursive: true });
    copyFileSync(load.path, prebuild);
    const elsewhere = nativeInfo({ MICROGPT_PREBUILD: join(dir, 'elsewhere'), PREBUILDS_ONLY: '1' });
    assert.equal(elsewhere.native.path, prebuild);
    assert.equal(elsewhere.native.isa, load.addon?.cpu().best);
    const none = nativeInfo({ MICROGPT_PREBUILD: join(dir, 'nothing-here'), PREBUILDS_ONLY: '1' });
    assert.deepEqual(none.native, { path: null, isa: null, supported: [] });
    assert.equal(none.line, 'native      no binary (see backends)');
  });
});

describe('microgpt convert', () => {
  test('a nanoGPT checkpoint becomes safetensors that generates the same text', async () => {
    const f16 = expected('tiny-nobias-f16');
    const out = join(dir, 'converted.safetensors');
    const r = run('convert', '--model', fixture('models', 'tiny-nobias-f16'), '--out', out, '--dtype', 'f16');
    assert.equal(r.status, 0, r.stderr);
    const model = await readSafetensors(out);
    assert.equal(model.storedDType, 'F16');
    assert.equal(model.metadata['convertedFrom'], 'nanogpt-checkpoint');
    const g = run('generate', '--model', out, '--prompt', f16.greedy.prompt, '--temperature', '0', '--max-new-tokens', String(f16.greedy.maxNewTokens));
    assert.equal(g.stdout, f16.greedy.continuation);
  });

  test('needs --out and a known dtype', () => {
    fails(/convert needs --out/, 'convert', '--model', modelDir);
    fails(/--dtype must be f32, f16 or bf16, got "int8"/, 'convert', '--model', modelDir, '--out', join(dir, 'x.safetensors'), '--dtype', 'int8');
  });
});

describe('microgpt eval', () => {
  test('--by-position prints the loss at each context length and what each --context policy sees; --chart draws it', async () => {
    const curves = JSON.parse(await readFile(fixture('expected', 'position-loss.json'), 'utf8')) as {
      text: string;
      models: Record<string, { lossByPosition: number[] }>;
    };
    const want = curves.models['tiny-bias']!.lossByPosition;
    const data = join(dir, 'text.txt');
    await writeFile(data, curves.text);
    const r = run('eval', '--model', modelDir, '--data', data, '--by-position', '--keep', '5');
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { loss: number; blockSize: number; lossByPosition: number[]; contextPolicies: { slide: number; shift: { keep: number; loss: number } } };
    assert.equal(out.blockSize, 16);
    assert.ok(out.lossByPosition.every((l, i) => Math.abs(l - want[i]!) < 1e-4));
    const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
    assert.equal(out.contextPolicies.slide, out.lossByPosition[15]);
    assert.deepEqual(out.contextPolicies.shift, { keep: 5, loss: mean(out.lossByPosition.slice(4)) });

    const chart = join(dir, 'loss.svg');
    const c = run('eval', '--model', modelDir, '--data', data, '--chart', chart);
    assert.equal(c.status, 0, c.stderr);
    assert.match(c.stdout, /^loss \d\.\d{4} .*\npast the window: --context slide sees loss \d\.\d{4} \(context 16\), --context shift --keep 8 \d\.\d{4} \(contexts 8\.\.16\)\n$/);
    const svg = await readFile(chart, 'utf8');
    assert.ok(svg.startsWith('<svg') && svg.trimEnd().endsWith('</svg>'));
    assert.equal(svg.match(/<polyline points="([^"]*)"/)![1]!.split(' ').length, 16);
    assert.match(svg, /context 'shift', keep 8: n = 8\.\.16 equally often/);

    fails(/--keep marks the shift policy on the loss by position: add --by-position or --chart$/, 'eval', '--model', modelDir, '--data', data, '--keep', '4');
    fails(/--keep must be an integer from 1 to 15, got 16$/, 'eval', '--model', modelDir, '--data', data, '--by-position', '--keep', '16');
  });
});
