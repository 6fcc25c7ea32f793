/**
 * Every error a user can cause is a MicroGPTError with a stable `code`, so callers can branch on
 * the kind of failure and the CLI can print one line without a stack trace.
 */
export type MicroGPTErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_INVALID_CONFIG'
  | 'ERR_BAD_CHECKPOINT'
  | 'ERR_UNSAFE_PICKLE'
  | 'ERR_UNKNOWN_TOKEN'
  | 'ERR_BACKEND_UNAVAILABLE'
  | 'ERR_DISPOSED';

export class MicroGPTError extends Error {
  readonly code: MicroGPTErrorCode;

  constructor(code: MicroGPTErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MicroGPTError';
    this.code = code;
  }
}

export function invalidArgument(message: string): MicroGPTError {
  return new MicroGPTError('ERR_INVALID_ARGUMENT', message);
}

export function badCheckpoint(source: string, message: string): MicroGPTError {
  return new MicroGPTError('ERR_BAD_CHECKPOINT', `${source}: ${message}`);
}

/** Precision 'f16' asked of weights float16 cannot hold (the same words for every engine). */
export function beyondFloat16(): MicroGPTError {
  return invalidArgument("precision 'f16': a weight is beyond float16's range (|w| >= 65520, or not finite); use precision 'f32'");
}
