// Which native binary an install takes, on one machine: node-gyp-build's choice of prebuild by
// platform, arch and libc (child processes told another platform through its own environment
// variables), the install script's decision (scripts/install.mjs: a prebuild that works, one that
// fails its self-check or does not load, a build from source, the js fallback) with fake binaries
// and a stubbed build, and the script itself as npm runs it, with the real binary.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import { loadAddon } from '../lib/backends/native/binding.js';
import { ROOT } from './helpers.js';

// The package's own binary, found as the package finds it (before the variables that steer
// node-gyp-build are cleared below); null when it does not load.
const ownLoad = loadAddon();
const REAL = ownLoad.addon !== null ? ownLoad.path : null;

// What steers node-gyp-build besides the files: each case below sets its own.
const STEERING = ['MICROGPT_PREBUILD', 'PREBUILDS_ONLY', 'npm_config_platform', 'npm_config_arch', 'LIBC'];
for (const name of STEERING) delete process.env[name];

interface Probe {
  path: string | null;
  problem: string | null;
}
interface Choice {
  source: 'prebuild' | 'build' | 'built' | 'js';
  path: string | null;
  why: string | null;
}
interface InstallScript {
  probe(root: string, load?: (path: string) => unknown): Probe;
  choose(root: string, steps: { probe: () => Probe; build: () => { ok: boolean; why: string | null } }): Choice;
}
const install = (await import(pathToFileURL(join(ROOT, 'scripts', 'install.mjs')).href)) as InstallScript;
const require = createRequire(import.meta.url);
const NODE_GYP_BUILD = require.resolve('node-gyp-build');
const HOST = `${process.platform}-${process.arch}`;

const work = mkdtempSync(join(tmpdir(), 'microgpt-install-'));
after(() => rmSync(work, { recursive: true, force: true }));

let packages = 0;
/** A package folder named microgpt holding `files` (path relative to it → contents). */
function fakePackage(files: Record<string, string | Buffer>): string {
  const root = join(work, `pkg${packages++}`);
  mkdirSync(root);
  writeFileSync(join(root, 'package.json'), JSON.stringify({ name: 'microgpt', version: '0.0.0', type: 'module' }));
  for (const [path, contents] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), contents);
  }
  return root;
}

/** A fake binary: JSON saying what its selfCheck returns (null: every instruction set agrees). */
const works = JSON.stringify({ selfCheck: null });
const failsSelfCheck = JSON.stringify({ selfCheck: 'avx512 matmul differs from the scalar reference by 3.5e-2' });
/** Not a shared library at all: the real loader refuses it. */
const garbage = 'this is not a shared library\n';

/** The probe's loader: fake binaries answer from their JSON, anything else is really loaded. */
function load(path: string): unknown {
  const text = readFileSync(path);
  if (text[0] === 0x7b) {
    const { selfCheck } = JSON.parse(text.toString('utf8')) as { selfCheck: string | null };
    return { selfCheck: () => selfCheck };
  }
  return require(path);
}

describe('node-gyp-build picks the prebuild of the platform, arch and libc', () => {
  const root = fakePackage({
    'prebuilds/linux-x64/microgpt.glibc.node': 'linux-x64 glibc',
    'prebuilds/linux-x64/microgpt.musl.node': 'linux-x64 musl',
    'prebuilds/linux-arm64/microgpt.glibc.node': 'linux-arm64 glibc',
    'prebuilds/linux-arm64/microgpt.musl.node': 'linux-arm64 musl',
    'prebuilds/win32-x64/microgpt.node': 'win32-x64',
    'prebuilds/darwin-arm64/microgpt.node': 'darwin-arm64',
  });

  /** The file node-gyp-build resolves in `dir` for a process that believes it runs on `env`'s platform. */
  function resolved(dir: string, env: Record<string, string>): string {
    const clean: NodeJS.ProcessEnv = { ...process.env };
    for (const name of STEERING) delete clean[name];
    const r = spawnSync(
      process.execPath,
      ['-e', `try { console.log(require(${JSON.stringify(NODE_GYP_BUILD)}).resolve(${JSON.stringify(dir)})) } catch (e) { console.log('none: ' + e.message.split('\\n')[0]) }`],
      { encoding: 'utf8', env: { ...clean, ...env } },
    );
    assert.equal(r.status, 0, r.stderr);
    const out = r.stdout.trim();
    return out.startsWith('none: ') ? out : relative(dir, out).split(sep).join('/');
  }

  const cases: [string, Record<string, string>, string][] = [
    ['linux x64 glibc', { npm_config_platform: 'linux', npm_config_arch: 'x64', LIBC: 'glibc' }, 'prebuilds/linux-x64/microgpt.glibc.node'],
    ['linux x64 musl (Alpine)', { npm_config_platform: 'linux', npm_config_arch: 'x64', LIBC: 'musl' }, 'prebuilds/linux-x64/microgpt.musl.node'],
    ['linux arm64 glibc', { npm_config_platform: 'linux', npm_config_arch: 'arm64', LIBC: 'glibc' }, 'prebuilds/linux-arm64/microgpt.glibc.node'],
    ['linux arm64 musl', { npm_config_platform: 'linux', npm_config_arch: 'arm64', LIBC: 'musl' }, 'prebuilds/linux-arm64/microgpt.musl.node'],
    ['win32 x64', { npm_config_platform: 'win32', npm_config_arch: 'x64' }, 'prebuilds/win32-x64/microgpt.node'],
    ['darwin arm64', { npm_config_platform: 'darwin', npm_config_arch: 'arm64' }, 'prebuilds/darwin-arm64/microgpt.node'],
  ];
  for (const [name, env, expected] of cases) {
    test(name, () => assert.equal(resolved(root, env), expected));
  }

  test('none for a platform or arch without a prebuild (the install then builds from source)', () => {
    assert.match(resolved(root, { npm_config_platform: 'darwin', npm_config_arch: 'x64' }), /^none: No native build was found for platform=darwin arch=x64 /);
    assert.match(resolved(root, { npm_config_platform: 'win32', npm_config_arch: 'arm64' }), /^none: No native build was found for platform=win32 arch=arm64 /);
    assert.match(resolved(root, { npm_config_platform: 'linux', npm_config_arch: 'ppc64' }), /^none: No native build was found/);
  });

  test('an earlier build/Release/ comes before any prebuild; MICROGPT_PREBUILD points elsewhere; PREBUILDS_ONLY skips build/', () => {
    const built = fakePackage({ 'build/Release/microgpt.node': 'built', 'prebuilds/linux-x64/microgpt.glibc.node': 'prebuilt' });
    const host = { npm_config_platform: 'linux', npm_config_arch: 'x64', LIBC: 'glibc' };
    assert.equal(resolved(built, host), 'build/Release/microgpt.node');
    assert.equal(resolved(built, { ...host, PREBUILDS_ONLY: '1' }), 'prebuilds/linux-x64/microgpt.glibc.node');
    const elsewhere = fakePackage({ 'prebuilds/win32-x64/microgpt.node': 'elsewhere' });
    const r = resolved(built, { npm_config_platform: 'win32', npm_config_arch: 'x64', MICROGPT_PREBUILD: elsewhere });
    assert.equal(r, `../${basename(elsewhere)}/prebuilds/win32-x64/microgpt.node`);
  });
});

describe('the install script decides: prebuild, build from source, or js', () => {
  /** choose() on `root` with the real probe and fake loader, and a build that runs `build`. */
  function decide(root: string, build: () => { ok: boolean; why: string | null }): { choice: Choice; builds: number } {
    let builds = 0;
    const choice = install.choose(root, {
      probe: () => install.probe(root, load),
      build: () => {
        builds++;
        return build();
      },
    });
    return { choice, builds };
  }
  const noBuild = (): never => assert.fail('the install built although a binary worked');
  /** A build that leaves `contents` in build/Release/microgpt.node, as scripts/build-native.mjs does. */
  const buildsInto = (root: string, contents: string) => () => {
    mkdirSync(join(root, 'build', 'Release'), { recursive: true });
    writeFileSync(join(root, 'build', 'Release', 'microgpt.node'), contents);
    return { ok: true, why: null };
  };

  test('a prebuild that loads and passes its self-check is kept, nothing is built', () => {
    const root = fakePackage({ [`prebuilds/${HOST}/microgpt.node`]: works });
    const { choice, builds } = decide(root, noBuild);
    assert.deepEqual(choice, { source: 'prebuild', path: join(root, 'prebuilds', HOST, 'microgpt.node'), why: null });
    assert.equal(builds, 0);
  });

  test('an earlier build that works is kept too', () => {
    const root = fakePackage({ 'build/Release/microgpt.node': works });
    assert.deepEqual(decide(root, noBuild).choice, { source: 'build', path: join(root, 'build', 'Release', 'microgpt.node'), why: null });
  });

  test('a prebuild that fails its self-check: built from source, and the build is what loads', () => {
    const root = fakePackage({ [`prebuilds/${HOST}/microgpt.node`]: failsSelfCheck });
    assert.match(install.probe(root, load).problem ?? '', /^it failed its self-check: avx512 matmul differs/);
    const { choice, builds } = decide(root, buildsInto(root, works));
    assert.deepEqual(choice, { source: 'built', path: join(root, 'build', 'Release', 'microgpt.node'), why: null });
    assert.equal(builds, 1);
  });

  test('a prebuild that does not load (not a shared library): built from source', () => {
    const root = fakePackage({ [`prebuilds/${HOST}/microgpt.node`]: garbage });
    assert.match(install.probe(root, load).problem ?? '', /^it does not load: /);
    assert.equal(decide(root, buildsInto(root, works)).choice.source, 'built');
  });

  test('only other platforms\' prebuilds: built from source', () => {
    const other = process.platform === 'win32' ? 'linux-x64' : 'win32-x64';
    const root = fakePackage({ [`prebuilds/${other}/microgpt.node`]: works, 'prebuilds/darwin-ppc/microgpt.node': works });
    assert.equal(install.probe(root, load).path, null);
    const { choice, builds } = decide(root, buildsInto(root, works));
    assert.equal(choice.source, 'built');
    assert.equal(builds, 1);
  });

  test('the build fails: the js backend, and why in one line', () => {
    const root = fakePackage({ [`prebuilds/${HOST}/microgpt.node`]: failsSelfCheck });
    const { choice } = decide(root, () => ({ ok: false, why: 'cannot build the native engine: cmake-js is not installed' }));
    assert.deepEqual(choice, { source: 'js', path: null, why: 'cannot build the native engine: cmake-js is not installed' });
  });

  test('the build succeeds but its binary fails its self-check: the js backend, saying so', () => {
    const root = fakePackage({});
    const { choice } = decide(root, buildsInto(root, failsSelfCheck));
    assert.equal(choice.source, 'js');
    assert.match(choice.why ?? '', /^the freshly built binary does not work: it failed its self-check: avx512 matmul differs/);
  });
});

describe('scripts/install.mjs as npm runs it, with the real binary', () => {
  const real = REAL;
  const skip = real === null ? `no native binary here (${ownLoad.reason})` : false;

  /**
   * A copy of the package's install script in a fake package, with a stub build-native.mjs that
   * records that it ran, then fails with `buildError` or leaves the real binary in build/Release/.
   */
  function runInstall(files: Record<string, string | Buffer>, buildError: string | null): { status: number | null; stderr: string; built: boolean } {
    const stub = `
      import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
      writeFileSync('build-ran', '');
      ${buildError === null
        ? `mkdirSync('build/Release', { recursive: true }); copyFileSync('built.node', 'build/Release/microgpt.node');`
        : `console.error(${JSON.stringify(`microgpt: ${buildError}`)}); process.exit(1);`}`;
    // What the stub build "makes": a copy of the real binary that no process has loaded.
    const root = fakePackage({ ...files, 'scripts/build-native.mjs': stub, 'built.node': readFileSync(real!) });
    copyFileSync(join(ROOT, 'scripts', 'install.mjs'), join(root, 'scripts', 'install.mjs'));
    // The script finds node-gyp-build through NODE_PATH, as it would in its node_modules.
    const env: NodeJS.ProcessEnv = { ...process.env, NODE_PATH: join(ROOT, 'node_modules') };
    for (const name of STEERING) delete env[name];
    const r = spawnSync(process.execPath, ['scripts/install.mjs'], { cwd: root, encoding: 'utf8', env, timeout: 60_000 });
    return { status: r.status, stderr: r.stderr, built: existsSync(join(root, 'build-ran')) };
  }

  test('the real prebuild for this platform: kept, silently, no build', { skip }, () => {
    const r = runInstall({ [`prebuilds/${HOST}/microgpt.node`]: readFileSync(real!) }, 'should not run');
    assert.deepEqual(r, { status: 0, stderr: '', built: false });
  });

  test('a broken prebuild and a build that succeeds: built, silently', { skip }, () => {
    const r = runInstall({ [`prebuilds/${HOST}/microgpt.node`]: garbage }, null);
    assert.deepEqual(r, { status: 0, stderr: '', built: true });
  });

  test('a broken prebuild and a build that fails: exit 0 and one line naming the js fallback', { skip }, () => {
    const r = runInstall({ [`prebuilds/${HOST}/microgpt.node`]: garbage }, 'cannot build the native engine: cmake-js is not installed');
    assert.equal(r.status, 0);
    assert.equal(r.built, true);
    assert.equal(
      r.stderr,
      'microgpt: native engine unavailable (cannot build the native engine: cmake-js is not installed); the package still works with the js backend\n',
    );
  });
});
