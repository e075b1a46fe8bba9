/** How nats.js failures map onto Troupe's error codes: transient or terminal, conflict or not. */
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { ErrorCode, TroupeError } from "@troupe/wire";

/** JetStream API error codes Troupe tells apart (nats-server's `errors.json`). */
export const ApiCode = {
  STREAM_NOT_FOUND: JetStreamApiCodes.StreamNotFound, // 10059
  CONSUMER_NOT_FOUND: JetStreamApiCodes.ConsumerNotFound, // 10014
  WRONG_LAST_SEQUENCE: JetStreamApiCodes.StreamWrongLastSequence, // 10071
  WRONG_LAST_SEQUENCE_UNKNOWN: JetStreamApiCodes.StreamWrongLastSequenceUnknown, // 10164
  STREAM_NAME_IN_USE: 10058,
  CONSUMER_ALREADY_EXISTS: 10148,
  CONSUMER_NAME_EXISTS: 10013,
  /** "JetStream system temporarily unavailable" (e.g. during a leader election). */
  TEMPORARILY_UNAVAILABLE: 10008,
  /** "JetStream not enabled", "insufficient resources", "cluster not available". */
  JETSTREAM_NOT_ENABLED: 10076,
  INSUFFICIENT_RESOURCES: 10023,
  NO_SUITABLE_PEERS: 10005,
} as const;

export function apiCode(e: unknown): number | undefined {
  if (e instanceof JetStreamApiError) return e.code;
  const code = (e as { code?: unknown } | null)?.code;
  return (e as Error | null)?.name === "JetStreamApiError" && typeof code === "number"
    ? code
    : undefined;
}

export function isStreamNotFound(e: unknown): boolean {
  return apiCode(e) === ApiCode.STREAM_NOT_FOUND || messageOf(e) === "stream not found";
}

export function isConsumerNotFound(e: unknown): boolean {
  return apiCode(e) === ApiCode.CONSUMER_NOT_FOUND || messageOf(e) === "consumer not found";
}

/** A compare-and-set (expected last subject sequence) that lost. */
export function isWrongLastSequence(e: unknown): boolean {
  const code = apiCode(e);
  return code === ApiCode.WRONG_LAST_SEQUENCE || code === ApiCode.WRONG_LAST_SEQUENCE_UNKNOWN;
}

const TRANSIENT_NAMES = new Set([
  "TimeoutError",
  "NoResponders",
  "RequestError",
  "ConnectionError",
  // nats.js says "jetstream is not enabled" when a JetStream request finds no responder:
  // during a restart or a leader election that passes
  "JetStreamNotEnabled",
]);
const TERMINAL_NAMES = new Set([
  "ClosedConnectionError",
  "DrainingConnectionError",
  "InvalidArgumentError",
  "InvalidSubjectError",
  "PermissionViolationError",
  "AuthorizationError",
]);

/** Whether an operation that failed with `e` may succeed if simply tried again. */
export function isTransient(e: unknown): boolean {
  if (e instanceof TroupeError) return e.retryAfterMs !== undefined;
  const name = (e as Error | null)?.name ?? "";
  if (TERMINAL_NAMES.has(name)) return false;
  if (TRANSIENT_NAMES.has(name)) return true;
  const code = apiCode(e);
  if (code !== undefined) {
    return (
      code === ApiCode.TEMPORARILY_UNAVAILABLE ||
      code === ApiCode.INSUFFICIENT_RESOURCES ||
      code === ApiCode.NO_SUITABLE_PEERS ||
      (e as JetStreamApiError).status === 503
    );
  }
  // other JetStream errors (e.g. a 503 status with no API error) and plain errors: try again
  return name === "JetStreamError" || name === "JetStreamStatusError";
}

export function isClosed(e: unknown): boolean {
  const name = (e as Error | null)?.name;
  return name === "ClosedConnectionError" || name === "DrainingConnectionError";
}

export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A failure talking to NATS, retryable unless the connection is gone for good. */
export function transportError(
  what: string,
  e: unknown,
  details?: Record<string, unknown>,
): TroupeError {
  if (e instanceof TroupeError) return e;
  const closed = isClosed(e);
  const message = closed
    ? `${what}: the NATS connection is closed`
    : `${what}: ${describeNatsError(e)}`;
  return new TroupeError(ErrorCode.TRANSPORT_ERROR, message, {
    cause: e,
    ...(closed ? {} : { retryAfterMs: 1000 }),
    ...(details === undefined ? {} : { details }),
  });
}

/** A failure of the KV store; `conflict` when a compare-and-set lost. */
export function storageError(
  what: string,
  e: unknown,
  details: Record<string, unknown> = {},
): TroupeError {
  if (e instanceof TroupeError) return e;
  if (isWrongLastSequence(e)) {
    return new TroupeError(
      ErrorCode.STORAGE_ERROR,
      `${what}: changed underneath (${messageOf(e)})`,
      {
        cause: e,
        details: { ...details, conflict: true },
      },
    );
  }
  const transient = isTransient(e);
  return new TroupeError(ErrorCode.STORAGE_ERROR, `${what}: ${describeNatsError(e)}`, {
    cause: e,
    details,
    ...(transient ? { retryAfterMs: 1000 } : {}),
  });
}

/** nats.js messages are terse ("timeout"): say what it means here. */
export function describeNatsError(e: unknown): string {
  const name = (e as Error | null)?.name;
  switch (name) {
    case "TimeoutError":
      return "NATS did not answer in time (server down, restarting or overloaded?)";
    case "NoResponders":
    case "JetStreamNotEnabled":
      return "no JetStream responder (server restarting, stream leader being elected, or the stream is missing)";
    case "ClosedConnectionError":
      return "the NATS connection is closed";
    case "DrainingConnectionError":
      return "the NATS connection is draining";
    default:
      return messageOf(e);
  }
}
