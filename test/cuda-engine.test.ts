// The CUDA engine on a GPU: the module built beside the addon (microgpt_cuda.so), the same tests as
// on the emulated module (test/cuda-suite.ts). Without a usable device they are skipped, saying why.
import { cudaUnavailableReason } from '../lib/backends/cuda.js';
import { defineCudaSuite } from './cuda-suite.js';

const reason = cudaUnavailableReason();

defineCudaSuite({
  name: 'GPU',
  skip: reason === null ? false : `no CUDA device here (${reason}): run on a GPU machine`,
  emulated: false,
  env: {},
});
