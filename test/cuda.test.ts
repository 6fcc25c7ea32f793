// The CUDA module (native/cuda/, native/cuda_loader.cpp): built beside the addon wherever nvcc is,
// opened at run time, never a dependency of the CPU binary; without it, the driver or a device,
// backend 'cuda' refuses in one line naming why, and everything else runs as always.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { cudaStatus, cudaUnavailableReason } from '../lib/backends/cuda.js';
import { loadAddon } from '../lib/backends/native/binding.js';
import { loadModel, MicroGPTError } from '../lib/index.js';
import { ROOT } from './helpers.js';

const { addon, path: addonPath } = loadAddon();
const status = cudaStatus();
const usable = status?.devices.filter((d) => d.usable) ?? [];

/** nvcc where CMake's MICROGPT_CUDA=AUTO looks: CUDACXX, PATH, /usr/local/cuda/bin. */
function findNvcc(): string | null {
  const candidates = [
    process.env.CUDACXX,
    ...(process.env.PATH ?? '').split(delimiter).map((d) => join(d, 'nvcc')),
    '/usr/local/cuda/bin/nvcc',
  ];
  return candidates.find((c): c is string => c !== undefined && c !== '' && existsSync(c)) ?? null;
}

/** The shared libraries an ELF file needs (readelf -d), or null where readelf is missing. */
function needed(file: string): string[] | null {
  const r = spawnSync('readelf', ['-d', file], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  return [...r.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1] as string);
}

const linux = process.platform === 'linux';
const skipNoAddon = addon === null ? 'no native binary: the CUDA module is opened by it' : false;

describe('the CUDA module', { skip: skipNoAddon }, () => {
  test('is built beside the addon wherever CMake found nvcc, and links no CUDA library dynamically', (t) => {
    const nvcc = findNvcc();
    const cache = join(ROOT, 'build', 'CMakeCache.txt');
    if (!linux || process.arch !== 'x64' || nvcc === null || addonPath === null) {
      t.skip('not linux-x64, or no nvcc here (CUDACXX, PATH, /usr/local/cuda/bin): the module is not built');
      return;
    }
    if (addonPath !== join(ROOT, 'build', 'Release', 'microgpt.node') || !existsSync(cache)) {
      t.skip(`the addon in use is not this checkout's build (${addonPath}): its build's decision is unknown`);
      return;
    }
    // CMake records whether it built the module (it skips an nvcc older than 11.8, MICROGPT_CUDA=OFF).
    const built = /^MICROGPT_CUDA_MODULE_BUILT:INTERNAL=(\w+)$/m.exec(readFileSync(cache, 'utf8'))?.[1];
    if (built !== 'ON') {
      t.skip(`CMake did not build the module here (MICROGPT_CUDA_MODULE_BUILT=${built}): see the build's status line`);
      return;
    }
    const module = join(dirname(addonPath), 'microgpt_cuda.so');
    assert.ok(existsSync(module), `CMake built the module with ${nvcc}, but ${module} is missing`);
    // Unless MICROGPT_CUDA_MODULE names another (the emulated one, say), the addon opened this one.
    if (!process.env['MICROGPT_CUDA_MODULE']) assert.equal(status?.module, module, 'the addon opened the module beside it');
    const libs = needed(module);
    if (libs === null) {
      t.diagnostic('no readelf here: the module was not inspected');
      return;
    }
    assert.deepEqual(
      libs.filter((l) => /cuda|cublas/i.test(l)),
      [],
      `the module needs only the driver, found at run time: ${libs.join(', ')}`,
    );
  });

  test('the CPU binary never depends on CUDA', (t) => {
    const libs = addonPath === null ? null : needed(addonPath);
    if (!linux || libs === null) {
      t.skip('not Linux, or no readelf here');
      return;
    }
    assert.deepEqual(libs.filter((l) => /cuda/i.test(l)), [], `microgpt.node needs ${libs.join(', ')}`);
  });

  test("backend 'cuda' refuses in one line naming why where it cannot run: what is missing", async (t) => {
    const reason = cudaUnavailableReason();
    if (reason === null) {
      t.skip(`a CUDA device is usable here (${usable.map((d) => d.name).join('; ')}): test/cuda-engine.test.ts runs the engine`);
      return;
    }
    assert.equal(reason, status?.reason);
    await assert.rejects(loadModel('default', { backend: 'cuda' }), (e: unknown) => {
      assert.ok(e instanceof MicroGPTError);
      assert.equal(e.code, 'ERR_BACKEND_UNAVAILABLE');
      assert.ok(e.message.includes(reason), e.message);
      assert.ok(!e.message.includes('\n'), 'one line');
      return true;
    });
  });

  test('devices are listed with name, memory and compute capability where there are some', (t) => {
    if (status === null || status.devices.length === 0) {
      t.skip(`no CUDA device here (${status?.reason ?? 'no native binary'}): checked on a GPU machine`);
      return;
    }
    for (const d of status.devices) {
      assert.ok(d.name.length > 0 && d.memoryBytes > 0 && /^\d+\.\d+$/.test(d.computeCapability), JSON.stringify(d));
      assert.equal(d.usable, Number(d.computeCapability.split('.')[0]) >= 8);
    }
  });

  test('without the module, the reason says so and the native engine runs as always', () => {
    const cli = join(ROOT, 'dist', 'lib', 'cli.js');
    const run = (env: NodeJS.ProcessEnv) => {
      const r = spawnSync(process.execPath, [cli, 'info', '--json'], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as { backends: { name: string; available: boolean; reason: string | null }[]; cuda: { reason: string } };
    };
    const missing = join(ROOT, 'no-such-folder', 'microgpt_cuda.so');
    const info = run({ MICROGPT_CUDA_MODULE: missing });
    assert.match(info.cuda.reason, /^no CUDA module \(.*no-such-folder.*\); it is built on linux-x64 when nvcc/);
    assert.equal(info.backends.find((b) => b.name === 'native')?.available, true);
    assert.equal(info.backends.find((b) => b.name === 'cuda')?.reason, info.cuda.reason);
    const g = spawnSync(process.execPath, [cli, 'generate', '--backend', 'native', '--temperature', '0', '--max-new-tokens', '20'], {
      encoding: 'utf8',
      env: { ...process.env, MICROGPT_CUDA_MODULE: missing },
      timeout: 60_000,
    });
    assert.equal(g.status, 0, g.stderr);
    assert.ok(g.stdout.length >= 20);
  });
});
