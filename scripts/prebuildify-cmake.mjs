#!/usr/bin/env node
// prebuildify drives node-gyp only: it runs `<this> rebuild --target=<node> --arch=<arch> --release`
// in the package folder, then takes the .node file it finds in build/Release. This stands in for
// node-gyp and builds with cmake-js (scripts/build-native.mjs) instead. Node-API binaries do not
// depend on the target Node version. It builds for the machine it runs on only: linux-arm64 is
// cross-built from linux-x64 by scripts/build-cross.mjs (npm run build:prebuild:linux-arm64).
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const arch = args.find((a) => a.startsWith('--arch='))?.slice('--arch='.length) ?? process.arch;
if (args[0] !== 'rebuild') {
  console.error(`prebuildify-cmake: only 'rebuild' is supported, got ${JSON.stringify(args.join(' '))}`);
  process.exit(1);
}
if (arch !== process.arch) {
  console.error(`prebuildify-cmake: cannot build for ${arch} on ${process.arch} (for linux-arm64 on linux-x64: npm run build:prebuild:linux-arm64)`);
  process.exit(1);
}
if (args.includes('--debug')) {
  console.error('prebuildify-cmake: debug prebuilds are not supported');
  process.exit(1);
}
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// Without the emulated CUDA module (a test tool, built by AUTO in a git checkout such as the
// release workflow's): prebuildify takes every shared library beside the addon.
const result = spawnSync(process.execPath, [join(root, 'scripts', 'build-native.mjs')], {
  stdio: 'inherit',
  env: { ...process.env, MICROGPT_CUDA_EMULATOR: 'OFF' },
});
// prebuildify then takes the .node file and the shared libraries beside it in build/Release/: the
// CUDA module, where one was built, lands in the prebuild's folder, where the addon looks for it
// (native/cuda_loader.cpp).
process.exit(result.status ?? 1);
