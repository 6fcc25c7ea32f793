#!/usr/bin/env node
// The package's install script. A loadable native binary (a prebuild, or an earlier build) means
// nothing to do; otherwise build one from source. If that fails too, say so in one line and
// succeed anyway: microgpt works without it, on the js backend.
//
// node-gyp-build picks the binary, as it does at run time (lib/backends/native/binding.ts):
// build/Release/ first, then prebuilds/<platform>-<arch>/, where a file's tags (microgpt.glibc.node,
// microgpt.musl.node) must match this libc. `choose` is the decision alone, with the loading and
// the build handed in, so that test/install-selection.test.ts can drive every path on one machine.
import { spawnSync } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const require = createRequire(import.meta.url);

/**
 * The binary node-gyp-build picks in the package at `root` and whether it works: { path, problem },
 * path null when there is none, problem null when it loads and every instruction set it runs here
 * agrees with the scalar reference (selfCheck). `load` is require's part (tests hand in fakes).
 */
export function probe(root, load = require) {
  let path;
  try {
    path = require('node-gyp-build').resolve(root);
  } catch (error) {
    return { path: null, problem: firstLine(error) };
  }
  let addon;
  try {
    addon = load(path);
  } catch (error) {
    return { path, problem: `it does not load: ${firstLine(error)}` };
  }
  if (typeof addon?.selfCheck !== 'function') return { path, problem: 'it is not microgpt\'s (no selfCheck)' };
  let check;
  try {
    check = addon.selfCheck();
  } catch (error) {
    return { path, problem: `its self-check threw: ${firstLine(error)}` };
  }
  return check === null ? { path, problem: null } : { path, problem: `it failed its self-check: ${check}` };
}

/**
 * What the install does: keep a binary that works (`source` 'prebuild' or 'build', the latter an
 * earlier build/Release/), else build from source and keep that ('built'), else fall back to the
 * js backend ('js', `why` in one line). `probe()` and `build()` are handed in: probe as above,
 * build () => ({ ok, why }).
 */
export function choose(root, { probe: check, build }) {
  const found = check();
  if (found.problem === null) return { source: kind(root, found.path), path: found.path, why: null };
  const built = build();
  if (!built.ok) return { source: 'js', path: null, why: built.why };
  const fresh = check();
  if (fresh.problem === null) return { source: 'built', path: fresh.path, why: null };
  return { source: 'js', path: fresh.path, why: `the freshly built binary does not work: ${fresh.problem}` };
}

/** 'prebuild' for prebuilds/<platform>-<arch>/, 'build' for anything else node-gyp-build found. */
function kind(root, path) {
  return relative(root, path).split(sep)[0] === 'prebuilds' ? 'prebuild' : 'build';
}

/** scripts/build-native.mjs in a child process: { ok, why }, why its one line of explanation. */
export function buildFromSource(root) {
  const build = spawnSync(process.execPath, [join(root, 'scripts', 'build-native.mjs'), '--quiet'], {
    cwd: root,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (build.error) return { ok: false, why: build.error.message };
  if (build.status !== 0) {
    const lines = `${build.stderr}\n${build.stdout}`.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
    const why = lines.find((l) => l.startsWith('microgpt:'))?.replace(/^microgpt: /, '') ?? lines.at(-1) ?? `exit status ${build.status}`;
    return { ok: false, why };
  }
  return { ok: true, why: null };
}

function firstLine(error) {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0].trim();
}

/** Whether this file is the program node runs (npm's `node scripts/install.mjs`), not an import. */
function isMain() {
  try {
    // import.meta.url is the real path; argv[1] may reach it through a symlink (npm link, workspaces).
    return process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href;
  } catch {
    return false;
  }
}

if (isMain()) {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  const result = choose(root, { probe: () => probe(root), build: () => buildFromSource(root) });
  if (result.source === 'js') {
    process.stderr.write(`microgpt: native engine unavailable (${result.why}); the package still works with the js backend\n`);
  }
}
