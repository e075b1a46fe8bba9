/** Troupe's typed errors: one base class, one map of stable codes, predicates per code. */

export const ErrorCode = {
  DECODE_ERROR: "DECODE_ERROR",
  CRYPTO_ERROR: "CRYPTO_ERROR",
  LIMIT_EXCEEDED: "LIMIT_EXCEEDED",
  UNSUPPORTED_VERSION: "UNSUPPORTED_VERSION",
  REPLAY_DETECTED: "REPLAY_DETECTED",
  INVALID_ARGUMENT: "INVALID_ARGUMENT",
  INVALID_STATE: "INVALID_STATE",
  CHANNEL_NOT_FOUND: "CHANNEL_NOT_FOUND",
  UNKNOWN_AGENT: "UNKNOWN_AGENT",
  VALIDATION_ERROR: "VALIDATION_ERROR",
  UNAUTHORIZED: "UNAUTHORIZED",
  RATE_LIMITED: "RATE_LIMITED",
  HANDLER_ERROR: "HANDLER_ERROR",
  QUARANTINE_TRIGGERED: "QUARANTINE_TRIGGERED",
  QUARANTINED: "QUARANTINED",
  TIMEOUT: "TIMEOUT",
  STORAGE_ERROR: "STORAGE_ERROR",
  TRANSPORT_ERROR: "TRANSPORT_ERROR",
  SHUTDOWN: "SHUTDOWN",
  CONFIG_ERROR: "CONFIG_ERROR",
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface TroupeErrorOptions extends ErrorOptions {
  /** When set, the operation may succeed if retried after this many milliseconds. */
  retryAfterMs?: number;
  /** Structured facts about the failure (safe to log and to send to a peer). */
  details?: Record<string, unknown>;
}

export class TroupeError extends Error {
  override name = "TroupeError";
  readonly code: ErrorCode;
  readonly retryAfterMs: number | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: TroupeErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryAfterMs = options?.retryAfterMs;
    this.details = options?.details;
  }

  /** A retryable error may succeed later; a terminal one never will. */
  get retryable(): boolean {
    return this.retryAfterMs !== undefined;
  }
}

export function isTroupeError(e: unknown): e is TroupeError {
  return e instanceof TroupeError;
}

function is(code: ErrorCode) {
  return (e: unknown): e is TroupeError => e instanceof TroupeError && e.code === code;
}

export const isDecodeError = is(ErrorCode.DECODE_ERROR);
export const isCryptoError = is(ErrorCode.CRYPTO_ERROR);
export const isLimitExceeded = is(ErrorCode.LIMIT_EXCEEDED);
export const isInvalidArgument = is(ErrorCode.INVALID_ARGUMENT);
export const isUnsupportedVersion = is(ErrorCode.UNSUPPORTED_VERSION);
export const isReplayDetected = is(ErrorCode.REPLAY_DETECTED);
export const isTimeout = is(ErrorCode.TIMEOUT);
export const isValidationError = is(ErrorCode.VALIDATION_ERROR);
export const isUnknownAgent = is(ErrorCode.UNKNOWN_AGENT);
export const isQuarantined = is(ErrorCode.QUARANTINED);
export const isInvalidState = is(ErrorCode.INVALID_STATE);
export const isChannelNotFound = is(ErrorCode.CHANNEL_NOT_FOUND);

/** A plain, transferable description of an error (what an error frame carries). */
export interface ErrorInfo {
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
  retryAfterMs?: number;
}

export function toErrorInfo(e: unknown): ErrorInfo {
  if (e instanceof TroupeError) {
    const info: ErrorInfo = { code: e.code, message: e.message };
    if (e.details !== undefined) info.details = e.details;
    if (e.retryAfterMs !== undefined) info.retryAfterMs = e.retryAfterMs;
    return info;
  }
  const message = e instanceof Error ? e.message : String(e);
  return { code: ErrorCode.HANDLER_ERROR, message };
}

export function fromErrorInfo(info: ErrorInfo): TroupeError {
  const known = Object.hasOwn(ErrorCode, info.code) ? info.code : ErrorCode.HANDLER_ERROR;
  const opts: TroupeErrorOptions = {};
  if (info.details !== undefined) opts.details = info.details;
  if (info.retryAfterMs !== undefined) opts.retryAfterMs = info.retryAfterMs;
  return new TroupeError(known, info.message, opts);
}
