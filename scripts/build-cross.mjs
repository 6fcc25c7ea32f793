#!/usr/bin/env node
// Cross-builds the native engine for another platform on this one, into prebuilds/<target>/ under
// the name prebuildify gives (so node-gyp-build finds it there), stripped:
//
//   node scripts/build-cross.mjs linux-arm64     (npm run build:prebuild:linux-arm64)
//
// linux-arm64 from linux-x64 only, with the distribution's cross compiler
// (apt-get install g++-aarch64-linux-gnu; scripts/install-arm64-deps.sh installs it) and
// cmake/aarch64-linux-gnu.cmake. It builds in build-arm64/, never in build/ (the host's build).
// Node's headers are taken as scripts/build-native.mjs takes them: npm_config_nodedir, else the
// running node's <prefix>/include/node. Node-API headers do not depend on the architecture.
// scripts/linux-arm64.sh runs the result under qemu.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const TARGETS = {
  'linux-arm64': {
    toolchain: join(root, 'cmake', 'aarch64-linux-gnu.cmake'),
    prefix: 'aarch64-linux-gnu-',
    apt: 'g++-aarch64-linux-gnu',
    buildDir: join(root, 'build-arm64'),
    elfMachine: 183, // EM_AARCH64
  },
};

const target = process.argv[2];
const spec = TARGETS[target];
function fail(message) {
  console.error(`build-cross: ${message}`);
  process.exit(1);
}
if (spec === undefined) fail(`usage: node scripts/build-cross.mjs <${Object.keys(TARGETS).join('|')}>`);
if (`${process.platform}-${process.arch}` !== 'linux-x64') fail(`cross-building ${target} is set up from linux-x64 only, not ${process.platform}-${process.arch}`);

function has(command) {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}
if (!has('cmake')) fail('cmake is missing (apt-get install cmake)');
if (!has(`${spec.prefix}g++`)) fail(`${spec.prefix}g++ is missing (apt-get install ${spec.apt}, or bash scripts/install-arm64-deps.sh)`);

const nodedir = process.env.npm_config_nodedir || join(dirname(process.execPath), '..');
const include = join(nodedir, 'include', 'node');
if (!existsSync(join(include, 'node_api.h'))) fail(`no node_api.h in ${include} (Node's headers); set npm_config_nodedir to a Node installation that has them`);

function run(command, args) {
  const r = spawnSync(command, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) fail(`${command} ${args.join(' ')} failed (${r.error?.message ?? `exit status ${r.status}`})`);
}

const started = Date.now();
const generator = has('ninja') ? ['-G', 'Ninja'] : [];
// A build folder configured with another generator cannot be reused.
const cache = join(spec.buildDir, 'CMakeCache.txt');
if (existsSync(cache) && !readFileSync(cache, 'utf8').includes(`CMAKE_GENERATOR:INTERNAL=${generator.length ? 'Ninja' : 'Unix Makefiles'}`)) {
  rmSync(spec.buildDir, { recursive: true, force: true });
}
mkdirSync(spec.buildDir, { recursive: true });
run('cmake', [
  '-S', root, '-B', spec.buildDir, ...generator, '--log-level=WARNING',
  `-DCMAKE_TOOLCHAIN_FILE=${spec.toolchain}`, '-DCMAKE_BUILD_TYPE=Release', `-DCMAKE_JS_INC=${include}`,
]);
run('cmake', ['--build', spec.buildDir, '--parallel', String(availableParallelism())]);

const built = join(spec.buildDir, 'microgpt.node');
const header = readFileSync(built).subarray(0, 20);
if (header.readUInt32BE(0) !== 0x7f454c46 || header.readUInt16LE(18) !== spec.elfMachine) fail(`${built} is not an ELF file for ${target}`);

// prebuildify's name for `--napi --tag-libc`: <package name>.glibc.node.
const name = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).name;
const outDir = join(root, 'prebuilds', target);
const out = join(outDir, `${name}.glibc.node`);
mkdirSync(outDir, { recursive: true });
copyFileSync(built, out);
run(`${spec.prefix}strip`, ['--strip-all', out]);
console.log(
  `build-cross: ${relative(root, out)} (${(statSync(out).size / 1024).toFixed(0)} KB stripped) in ${((Date.now() - started) / 1000).toFixed(1)} s`,
);
