#!/usr/bin/env node
// Run before `npm publish`: a release must carry a prebuilt binary for every platform we promise
// (users there need no compiler). Build each on its platform with `npm run build:prebuild`.
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REQUIRED = ['linux-x64'];
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const missing = REQUIRED.filter((platform) => {
  const dir = join(root, 'prebuilds', platform);
  return !existsSync(dir) || !readdirSync(dir).some((f) => f.endsWith('.node'));
});
if (missing.length > 0) {
  console.error(`microgpt: not publishing: no prebuilt binary for ${missing.join(', ')} in prebuilds/ (run npm run build:prebuild on each)`);
  process.exit(1);
}
console.log(`microgpt: prebuilds present for ${REQUIRED.join(', ')}`);
