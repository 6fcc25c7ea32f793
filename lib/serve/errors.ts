/**
 * Failures as OpenAI reports them: `{"error": {"message", "type", "param", "code"}}` with the HTTP
 * status. Anything that is not an ApiError or a MicroGPTError becomes a 500 without its message
 * or stack, which go to the server's log instead.
 */
import { MicroGPTError } from '../errors.js';

const TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  404: 'invalid_request_error',
  405: 'invalid_request_error',
  413: 'invalid_request_error',
  429: 'rate_limit_error',
  503: 'server_error',
};

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  get type(): string {
    return TYPES[this.status] ?? (this.status >= 500 ? 'server_error' : 'invalid_request_error');
  }

  toJSON(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** The library's option names as they appear in its messages, and the API parameter each is. */
const PARAMS: [RegExp, string][] = [
  [/^maxNewTokens\b/, 'max_tokens'],
  [/^temperature\b/, 'temperature'],
  [/^topK\b/, 'top_k'],
  [/^topP\b/, 'top_p'],
  [/^seed\b/, 'seed'],
  [/stop string|^stop\b/, 'stop'],
  [/^prompt\b|character/, 'prompt'],
];

/** Any thrown value as the ApiError to send. `log` receives what a 500 hides. */
export function toApiError(error: unknown, log: (message: string) => void): ApiError {
  if (error instanceof ApiError) return error;
  if (error instanceof MicroGPTError && (error.code === 'ERR_INVALID_ARGUMENT' || error.code === 'ERR_UNKNOWN_TOKEN')) {
    const param = PARAMS.find(([pattern]) => pattern.test(error.message))?.[1] ?? null;
    return new ApiError(400, error.message, param, error.code === 'ERR_UNKNOWN_TOKEN' ? 'unknown_token' : null);
  }
  log(error instanceof Error ? (error.stack ?? error.message) : String(error));
  return new ApiError(500, 'the engine failed while generating; the error was logged on the server', null, 'engine_error');
}
