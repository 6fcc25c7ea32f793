#!/usr/bin/env node
// Builds the native engine from source with cmake-js: build/Release/microgpt.node.
// Exits non-zero when the build fails. `--quiet` leaves out cmake-js's progress, not the compiler's output.
//
// cmake-js downloads Node's headers unless npm tells it where they are (npm_config_nodedir).
// Outside npm we point it at the headers of the running node, which every Node installation
// ships in <prefix>/include/node, so the build works offline.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const quiet = process.argv.includes('--quiet');

if (!process.env.npm_config_nodedir) {
  const prefix = join(dirname(process.execPath), '..');
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) process.env.npm_config_nodedir = prefix;
}

const require = createRequire(import.meta.url);
let cmakejs;
try {
  cmakejs = require('cmake-js');
} catch (error) {
  console.error(`microgpt: cannot build the native engine: cmake-js is not installed (${error.message})`);
  process.exit(1);
}

const started = Date.now();
try {
  const build = new cmakejs.BuildSystem({
    directory: root,
    out: join(root, 'build'),
    config: 'Release',
    parallel: availableParallelism(),
    logLevel: quiet ? 'warn' : 'info',
    // The CUDA module (CMakeLists.txt): AUTO unless MICROGPT_CUDA says ON (the release's
    // linux-x64 build, which must carry it) or OFF. The emulated one likewise with
    // MICROGPT_CUDA_EMULATOR (prebuilds turn it OFF: scripts/prebuildify-cmake.mjs).
    cMakeOptions: Object.fromEntries(
      ['MICROGPT_CUDA', 'MICROGPT_CUDA_EMULATOR'].filter((name) => process.env[name]).map((name) => [name, process.env[name]]),
    ),
  });
  await build.rebuild();
} catch (error) {
  console.error(`microgpt: building the native engine failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
if (!existsSync(join(root, 'build', 'Release', 'microgpt.node'))) {
  console.error('microgpt: the native build finished but build/Release/microgpt.node is missing');
  process.exit(1);
}
const built = ['microgpt_cuda.so', 'microgpt_cuda_emulated.so'].filter((f) => existsSync(join(root, 'build', 'Release', f)));
const extra = built.length > 0 ? ` and ${built.join(', ')}` : '';
if (!quiet) console.log(`microgpt: built build/Release/microgpt.node${extra} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
