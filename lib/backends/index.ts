import { MicroGPTError, invalidArgument } from '../errors.js';
import { cudaBackend, cudaUnavailableReason } from './cuda.js';
import { jsBackend } from './js/index.js';
import { nativeBackend, nativeUnavailableReason } from './native/index.js';
import type { Backend, BackendChoice, BackendName } from './types.js';

export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'js', 'native', 'cuda'];

/**
 * Why each engine that is not usable in this process is unavailable. 'auto' takes the fastest
 * engine that is available; naming an unavailable one is an error carrying this reason.
 */
function unavailableReason(name: BackendName): string | null {
  switch (name) {
    case 'js':
      return null;
    case 'native':
      return nativeUnavailableReason();
    case 'cuda':
      return cudaUnavailableReason();
  }
}

/** Fastest first: what 'auto' takes is the first available. */
const PREFERENCE: readonly BackendName[] = ['cuda', 'native', 'js'];

/** `except`: engines 'auto' passes over (one that failed to load the model). */
export function resolveBackend(choice: BackendChoice = 'auto', except: readonly BackendName[] = []): Backend {
  if (!BACKEND_CHOICES.includes(choice)) {
    throw invalidArgument(`backend must be one of ${BACKEND_CHOICES.join(', ')}, got ${JSON.stringify(choice)}`);
  }
  if (choice === 'auto') {
    const name = PREFERENCE.find((n) => !except.includes(n) && unavailableReason(n) === null) ?? 'js';
    return backendByName(name);
  }
  const reason = unavailableReason(choice);
  if (reason !== null) {
    throw new MicroGPTError('ERR_BACKEND_UNAVAILABLE', `backend '${choice}' is not available: ${reason}; use backend 'js' or 'auto'`);
  }
  return backendByName(choice);
}

/** Which engines this process can use, and why the others cannot. */
export function availableBackends(): { name: BackendName; available: boolean; reason: string | null }[] {
  return PREFERENCE.map((name) => {
    const reason = unavailableReason(name);
    return { name, available: reason === null, reason };
  });
}

export function backendByName(name: BackendName): Backend {
  switch (name) {
    case 'js':
      return jsBackend;
    case 'native':
      return nativeBackend;
    case 'cuda':
      return cudaBackend;
  }
}
