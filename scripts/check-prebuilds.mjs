#!/usr/bin/env node
// Run before `npm publish`: a release must carry a prebuilt binary for every platform we promise
// (users there need no compiler), each a binary for that platform and architecture (its header
// read here, so a prebuild gathered into the wrong folder cannot be published). The release
// workflow (.github/workflows/prebuild.yml) builds each on its own runner with
// `npm run build:prebuild` and gathers them into prebuilds/.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Each platform we promise, and what its binary's header must say. */
const REQUIRED = {
  'linux-x64': { format: 'ELF', machine: 62 }, // EM_X86_64
  'linux-arm64': { format: 'ELF', machine: 183 }, // EM_AARCH64
  'darwin-x64': { format: 'Mach-O', machine: 0x01000007 }, // CPU_TYPE_X86_64
  'darwin-arm64': { format: 'Mach-O', machine: 0x0100000c }, // CPU_TYPE_ARM64
  'win32-x64': { format: 'PE', machine: 0x8664 }, // IMAGE_FILE_MACHINE_AMD64
};

/** The binary's format and machine, or null when it is none of ELF, Mach-O (64-bit) and PE. */
function header(file) {
  const b = readFileSync(file);
  if (b.length >= 20 && b.readUInt32BE(0) === 0x7f454c46) return { format: 'ELF', machine: b.readUInt16LE(18) };
  if (b.length >= 8 && b.readUInt32LE(0) === 0xfeedfacf) return { format: 'Mach-O', machine: b.readUInt32LE(4) };
  if (b.length >= 64 && b.readUInt16LE(0) === 0x5a4d) {
    const pe = b.readUInt32LE(60);
    if (b.length >= pe + 6 && b.readUInt32LE(pe) === 0x00004550) return { format: 'PE', machine: b.readUInt16LE(pe + 4) };
  }
  return null;
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const problems = [];
const found = [];
for (const [platform, want] of Object.entries(REQUIRED)) {
  const dir = join(root, 'prebuilds', platform);
  const binaries = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.node')) : [];
  if (binaries.length === 0) {
    problems.push(`no prebuilt binary for ${platform}`);
    continue;
  }
  // The emulated CUDA module is a test tool (CMakeLists.txt), never shipped.
  if (existsSync(join(dir, 'microgpt_cuda_emulated.so'))) problems.push(`prebuilds/${platform}/microgpt_cuda_emulated.so is the emulated CUDA module, a test tool`);
  for (const name of binaries) {
    const got = header(join(dir, name));
    if (got === null || got.format !== want.format || got.machine !== want.machine) {
      const what = got === null ? 'not an ELF, Mach-O or PE binary' : `${got.format} for machine 0x${got.machine.toString(16)}`;
      problems.push(`prebuilds/${platform}/${name} is ${what}, not ${want.format} for ${platform}`);
    } else found.push(`${platform}/${name}`);
  }
}
// The linux-x64 prebuild carries the CUDA module (built with MICROGPT_CUDA=ON by the workflow).
const cudaModule = join(root, 'prebuilds', 'linux-x64', 'microgpt_cuda.so');
if (!existsSync(cudaModule)) problems.push('no CUDA module (microgpt_cuda.so) in prebuilds/linux-x64');
else found.push('linux-x64/microgpt_cuda.so');
if (problems.length > 0) {
  console.error(`microgpt: not publishing: ${problems.join('; ')} (the release workflow builds each with npm run build:prebuild on its own runner)`);
  process.exit(1);
}
console.log(`microgpt: prebuilds present: ${found.join(', ')}`);
