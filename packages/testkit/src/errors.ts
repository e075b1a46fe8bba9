/** The testkit's typed errors: one base class, a map of stable codes, a predicate per code. */

export const TestkitErrorCode = {
  /** No nats-server binary was found (run `bash scripts/setup.sh`). */
  NATS_SERVER_NOT_FOUND: "NATS_SERVER_NOT_FOUND",
  /** The nats-server process exited or reported a fatal error while starting. */
  NATS_SERVER_START_FAILED: "NATS_SERVER_START_FAILED",
  /** The server did not become ready in time. */
  NATS_SERVER_START_TIMEOUT: "NATS_SERVER_START_TIMEOUT",
  /** A port picked as free was taken before the server bound it; retry with new ports. */
  PORT_IN_USE: "PORT_IN_USE",
  /** The cluster did not elect a JetStream meta leader with every node current in time. */
  CLUSTER_NOT_READY: "CLUSTER_NOT_READY",
  /** No container engine is reachable, or testcontainers is not installed. */
  DOCKER_UNAVAILABLE: "DOCKER_UNAVAILABLE",
  /** The handle was cleaned up; it cannot be used again. */
  HANDLE_CLOSED: "HANDLE_CLOSED",
  INVALID_ARGUMENT: "INVALID_ARGUMENT",
} as const;

export type TestkitErrorCode = (typeof TestkitErrorCode)[keyof typeof TestkitErrorCode];

export interface TestkitErrorOptions extends ErrorOptions {
  /** When set, the operation may succeed if retried (e.g. with other ports). */
  retryAfterMs?: number;
  /** The last lines the server wrote, when a server process was involved. */
  serverLog?: string;
}

export class TestkitError extends Error {
  override name = "TestkitError";
  readonly code: TestkitErrorCode;
  readonly retryAfterMs: number | undefined;
  readonly serverLog: string | undefined;

  constructor(code: TestkitErrorCode, message: string, options?: TestkitErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryAfterMs = options?.retryAfterMs;
    this.serverLog = options?.serverLog;
  }

  get retryable(): boolean {
    return this.retryAfterMs !== undefined;
  }
}

export function isTestkitError(e: unknown): e is TestkitError {
  return e instanceof TestkitError;
}

function is(code: TestkitErrorCode) {
  return (e: unknown): e is TestkitError => e instanceof TestkitError && e.code === code;
}

export const isNatsServerNotFound = is(TestkitErrorCode.NATS_SERVER_NOT_FOUND);
export const isNatsServerStartFailed = is(TestkitErrorCode.NATS_SERVER_START_FAILED);
export const isNatsServerStartTimeout = is(TestkitErrorCode.NATS_SERVER_START_TIMEOUT);
export const isPortInUse = is(TestkitErrorCode.PORT_IN_USE);
export const isClusterNotReady = is(TestkitErrorCode.CLUSTER_NOT_READY);
export const isDockerUnavailable = is(TestkitErrorCode.DOCKER_UNAVAILABLE);
export const isHandleClosed = is(TestkitErrorCode.HANDLE_CLOSED);
