// The CUDA engine on the emulated module (build/Release/microgpt_cuda_emulated.so: the CUDA sources
// built by the host compiler against native/cuda/emulator.h, every kernel run on the CPU), so that
// its passes, batching, graphs and lifetimes are tested on machines without a GPU. The module is
// chosen before anything asks about CUDA (node --test runs each file in a process of its own), and
// the addon opens it once per process.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { defineCudaSuite } from './cuda-suite.js';
import { ROOT } from './helpers.js';

const module = join(ROOT, 'build', 'Release', 'microgpt_cuda_emulated.so');
process.env['MICROGPT_CUDA_MODULE'] = module;

defineCudaSuite({
  name: 'emulated',
  skip: existsSync(module) ? false : 'no emulated CUDA module: it is built from a git checkout on Linux (MICROGPT_CUDA_EMULATOR)',
  emulated: true,
  env: { MICROGPT_CUDA_MODULE: module },
});
