// What a user without a compiler gets: the package built with its prebuilt binary (prebuildify
// through our cmake-js shim), packed with `npm pack`, installed into an empty project with the
// compilers hidden from PATH, generating text on the native backend.
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { ROOT, expected, fixture } from './helpers.js';

const work = mkdtempSync(join(tmpdir(), 'microgpt-pack-'));
after(() => rmSync(work, { recursive: true, force: true }));

function sh(command: string, args: string[], options: SpawnSyncOptions): string {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 300_000, ...options });
  assert.equal(r.status, 0, `${command} ${args.join(' ')} failed (${r.status}):\n${String(r.stdout).slice(-2000)}\n${String(r.stderr).slice(-2000)}`);
  return String(r.stdout);
}

test('npm pack, then install with no compiler on PATH, gives a working native backend', { timeout: 600_000 }, () => {
  const npm = join(dirname(process.execPath), 'npm');
  assert.ok(existsSync(npm), `npm is expected beside node at ${npm}`);

  // 1. A copy of the package (so the build does not touch this checkout's build/), its prebuild.
  const stage = join(work, 'stage');
  mkdirSync(stage);
  for (const entry of ['package.json', 'README.md', 'CMakeLists.txt', 'native', 'scripts', 'dist', 'models', 'playground']) {
    if (existsSync(join(ROOT, entry))) cpSync(join(ROOT, entry), join(stage, entry), { recursive: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(stage, 'node_modules'), 'dir');
  // The CPU binary only: what is tested here is an install without a compiler, and nvcc's build of
  // the CUDA module (which test/cuda.test.ts checks) would add ~40 s to every run.
  sh(npm, ['run', 'build:prebuild'], { cwd: stage, env: { ...process.env, MICROGPT_CUDA: 'OFF' } });
  const prebuilds = readdirSync(join(stage, 'prebuilds', `${process.platform}-${process.arch}`));
  assert.ok(prebuilds.some((f) => f.endsWith('.node')), `no prebuilt binary: ${prebuilds.join(', ')}`);
  assert.ok(!existsSync(join(stage, 'build', 'Release', 'microgpt.node')), 'prebuildify should have moved the binary');
  sh(npm, ['pack', '--ignore-scripts', '--pack-destination', work], { cwd: stage });
  const tarball = readdirSync(work).find((f) => f.endsWith('.tgz'));
  assert.ok(tarball !== undefined);

  // 2. A PATH with node, npm and the shell that runs npm's scripts: no cc, c++, g++, make or cmake.
  const bin = join(work, 'bin');
  mkdirSync(bin);
  symlinkSync(process.execPath, join(bin, 'node'));
  symlinkSync(npm, join(bin, 'npm'));
  symlinkSync('/bin/sh', join(bin, 'sh'));
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: bin };
  delete env['npm_config_nodedir'];
  for (const tool of ['cc', 'c++', 'g++', 'gcc', 'make', 'cmake']) {
    assert.notEqual(spawnSync('/bin/sh', ['-c', `command -v ${tool}`], { env: { PATH: bin } }).status, 0, `${tool} is visible`);
  }

  // 3. Install into an empty project (dependencies from npm's cache, as `npm ci` left it).
  const project = join(work, 'project');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'user-project', private: true }));
  const install = spawnSync(npm, ['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, tarball)], {
    cwd: project,
    env,
    encoding: 'utf8',
    timeout: 300_000,
  });
  assert.equal(install.status, 0, `npm install failed:\n${install.stdout}\n${install.stderr}`);
  assert.doesNotMatch(install.stderr, /native engine unavailable/);
  assert.ok(!existsSync(join(project, 'node_modules', 'microgpt', 'build')), 'the install compiled instead of using the prebuild');
  assert.ok(existsSync(join(project, 'node_modules', 'microgpt', 'playground', 'index.html')), 'the package lacks the playground page');

  // 4. Generate through the installed bin on the native backend: nanoGPT's greedy text.
  const e = expected('tiny-bias');
  const out = sh(
    join(project, 'node_modules', '.bin', 'microgpt'),
    ['generate', '--backend', 'native', '--model', fixture('models', 'tiny-bias'), '--prompt', e.greedy.prompt, '--temperature', '0', '--max-new-tokens', String(e.greedy.maxNewTokens), '--json'],
    { cwd: project, env },
  );
  const result = JSON.parse(out) as { text: string; backend: string };
  assert.equal(result.backend, 'native');
  assert.equal(result.text, e.greedy.continuation);

  // 5. The bundled model comes with the package: no --model at all.
  const report = JSON.parse(readFileSync(join(ROOT, 'models', 'default.report.json'), 'utf8')) as {
    sample: { prompt: string; continuation: string };
  };
  const bundled = sh(
    join(project, 'node_modules', '.bin', 'microgpt'),
    ['generate', '--prompt', report.sample.prompt, '--temperature', '0', '--max-new-tokens', '80'],
    { cwd: project, env },
  );
  assert.equal(bundled, report.sample.continuation.slice(0, 80));
});
