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
  return new MicroGPTError('ERR_BAD_CHECKPOINT', `${shownPath(source)}: ${message}`);
}

/** A path as a message shows it: as it is, unless a control character in it would break the line. */
export function shownPath(path: string): string {
  return /[\u0000-\u001f\u007f]/.test(path) ? quote(path, 1024) : path;
}

/** Precision 'f16' asked of weights float16 cannot hold (the same words for every engine). */
export function beyondFloat16(): MicroGPTError {
  return invalidArgument("precision 'f16': a weight is beyond float16's range (|w| >= 65520, or not finite); use precision 'f32'");
}

/**
 * A name or string from a file or a caller, as it goes into a message: a JSON string (so a newline
 * or a quote in it cannot break the message's one line), cut to `max` characters.
 */
export function quote(text: string, max = 80): string {
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}…` : text);
}

/** An optional `signal` option: an AbortSignal or nothing. */
export function checkSignal(signal: unknown): asserts signal is AbortSignal | undefined {
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArgument('signal must be an AbortSignal');
}

/** An options argument: undefined is no options; anything but a plain object is an error naming it. */
export function optionsObject<T extends object>(value: T | undefined, name = 'options'): Partial<T> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalidArgument(`${name} must be an object, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`);
  }
  return value;
}
