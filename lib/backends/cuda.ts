/**
 * What CUDA this process could use: the native addon opens its CUDA module (microgpt_cuda.so,
 * built beside it when nvcc is found) at run time and asks for the devices. The CUDA engine's
 * forward pass is not in this build yet (the module has device discovery only), so `'cuda'` is
 * never available; the reason names what is missing first: the native binary, the module, the
 * driver, a device of compute capability 8.0 or later, or the engine.
 */
import { loadAddon, type AddonCudaStatus } from './native/binding.js';

export type CudaStatus = AddonCudaStatus;

/**
 * Whether this build has the CUDA engine's forward pass. Until it does, backend 'auto' does not
 * ask about CUDA at all: probing starts the NVIDIA driver, tens to hundreds of milliseconds for
 * an engine that could not be used anyway.
 */
export const CUDA_ENGINE_IN_BUILD = false;

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

/** Why backend 'cuda' cannot be used in this process. */
export function cudaUnavailableReason(): string {
  const { addon, reason } = loadAddon();
  if (addon === null) return `the CUDA engine runs inside the native binary, which did not load (${reason})`;
  const status = cudaStatus() as CudaStatus;
  if (status.reason !== null) return status.reason;
  const devices = status.devices.filter((d) => d.usable).map((d) => `${d.name}, compute capability ${d.computeCapability}`);
  return `CUDA devices found (${devices.join('; ')}), but this build's CUDA module has no forward pass yet`;
}
