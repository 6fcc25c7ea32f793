#!/usr/bin/env node
// The package's install script. A loadable native binary (a prebuild, or an earlier build) means
// nothing to do; otherwise build one from source. If that fails too, say so in one line and
// succeed anyway: microgpt works without it, on the js backend.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function loads() {
  try {
    const addon = require('node-gyp-build')(root);
    return typeof addon.selfCheck === 'function' && addon.selfCheck() === null;
  } catch {
    return false;
  }
}

if (!loads()) {
  const build = spawnSync(process.execPath, [join(root, 'scripts', 'build-native.mjs'), '--quiet'], {
    cwd: root,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let why = null;
  if (build.error) why = build.error.message;
  else if (build.status !== 0) {
    const lines = `${build.stderr}\n${build.stdout}`.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
    why = lines.find((l) => l.startsWith('microgpt:'))?.replace(/^microgpt: /, '') ?? lines.at(-1) ?? `exit status ${build.status}`;
  } else if (!loads()) why = 'the freshly built binary does not load';
  if (why !== null) {
    process.stderr.write(`microgpt: native engine unavailable (${why}); the package still works with the js backend\n`);
  }
}
