/**
 * The CUDA engine: the native addon opens its CUDA module (microgpt_cuda.so, built beside it when
 * nvcc is found) at run time, asks it for the devices once a process, and runs a model loaded with
 * a device there: the weights and every session's KV cache on the device, each batched pass the
 * module's. Sessions, batching and the engine thread are the native engine's (native/index.ts:
 * one runtime class for both). Unavailable, it says why in one line: the native binary, the
 * module (or one built for another version), the driver, or a device of compute capability 8.0
 * or later is missing.
 */
import { matricesBeyondFloat16, type ModelWeights } from '../weights.js';
import type { ModelConfig } from '../config.js';
import { MicroGPTError, beyondFloat16, invalidArgument } from '../errors.js';
import { addonTensors, NativeRuntime, translate } from './native/index.js';
import { loadAddon, type AddonCudaStatus, type AddonModel } from './native/binding.js';
import type { Backend, RuntimeOptions } from './types.js';

export type CudaStatus = AddonCudaStatus;

/** The CUDA module's status (probed once a process), or null when no native binary loads. */
export function cudaStatus(): CudaStatus | null {
  const { addon } = loadAddon();
  if (addon === null) return null;
  // A binary built before the CUDA module (an old build/Release/ that still loads) has no cuda().
  if (typeof addon.cuda !== 'function') {
    return { module: null, reason: 'the native binary predates the CUDA module; rebuild it (npm run build:native)', devices: [] };
  }
  return addon.cuda();
}

/**
 * Why backend 'cuda' cannot be used in this process, or null when it can: the module speaks this
 * version's interface and a device of compute capability 8.0 or later is there.
 */
export function cudaUnavailableReason(): string | null {
  const { addon, reason } = loadAddon();
  if (addon === null) return `the CUDA engine runs inside the native binary, which did not load (${reason})`;
  return (cudaStatus() as CudaStatus).reason;
}

/** The default CUDA device. */
export const DEFAULT_DEVICE = 0;

/** A `device` option: a CUDA device's index, an integer from 0 (checked against the devices at load). */
export function checkDeviceOption(device: unknown): asserts device is number | undefined {
  if (device !== undefined && (typeof device !== 'number' || !Number.isInteger(device) || device < 0 || device > 2 ** 31 - 1)) {
    throw invalidArgument(`device must be a CUDA device's index (an integer from 0), got ${typeof device === 'number' ? device : typeof device}`);
  }
}

/**
 * Why CUDA device `device` cannot run a model (no usable CUDA at all, no such device, too old a
 * device), or null when it can.
 */
export function cudaDeviceProblem(device: number): string | null {
  const reason = cudaUnavailableReason();
  if (reason !== null) return reason;
  const { devices } = cudaStatus() as CudaStatus;
  const d = devices[device];
  if (d === undefined) {
    const list = devices.map((x) => `${x.index}: ${x.name}`).join('; ');
    return `there is no CUDA device ${device}: this machine has ${devices.length} ${devices.length === 1 ? 'device' : 'devices'} (${list})`;
  }
  if (!d.usable) return `CUDA device ${device} (${d.name}) has compute capability ${d.computeCapability}; the module's kernels need 8.0 or later`;
  return null;
}

export interface CudaRuntimeOptions extends RuntimeOptions {
  /** The CUDA device's index (default 0). */
  readonly device?: number;
}

export const cudaBackend: Backend & {
  load(config: ModelConfig, weights: ModelWeights, options?: CudaRuntimeOptions): Promise<NativeRuntime>;
} = {
  name: 'cuda',
  async load(config: ModelConfig, weights: ModelWeights, options: CudaRuntimeOptions = {}): Promise<NativeRuntime> {
    checkDeviceOption(options.device);
    const device = options.device ?? DEFAULT_DEVICE;
    const problem = cudaDeviceProblem(device);
    if (problem !== null) {
      throw new MicroGPTError('ERR_BACKEND_UNAVAILABLE', `backend 'cuda' is not available: ${problem}; use backend 'native', 'js' or 'auto'`);
    }
    const { addon } = loadAddon();
    const precision = options.precision ?? 'auto';
    if (precision === 'f16' && matricesBeyondFloat16(weights)) throw beyondFloat16();
    let model: AddonModel;
    try {
      // One thread: the engine thread only waits on the device (threads is the CPU pool's).
      model = new addon!.Model(config, { threads: 1, precision, device });
      await model.load(addonTensors(config, weights));
    } catch (error) {
      translate(error);
    }
    return new NativeRuntime('cuda', config, model);
  },
};
