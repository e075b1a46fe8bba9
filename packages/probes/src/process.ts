/**
 * What the Troupe processes (worker, coordinator) share besides their probes: the common
 * command-line options, the log on stderr, telemetry, exit codes and the stop on SIGTERM/SIGINT.
 */
import { startTelemetry } from "@troupe/telemetry";
import { ErrorCode, isTroupeError } from "@troupe/wire";
import { InvalidArgumentError, Option } from "commander";
import { type Logger, pino } from "pino";

/** The exit code of a configuration error (a CONFIG_ERROR that stops the process). */
export const EXIT_CONFIG = 2;

/** An integer option of at least `min`, for commander's `argParser`. */
export function intAtLeast(min: number): (value: string) => number {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < min) {
      throw new InvalidArgumentError(`must be an integer >= ${min}`);
    }
    return n;
  };
}

/**
 * `--http-port` as the processes take it: a port number (0: any free port) or `off`.
 * Throws a RangeError saying what is wanted (the CLI layer turns it into a usage error).
 */
export function parseHttpPort(value: string): number | "off" {
  if (value.trim().toLowerCase() === "off") return "off";
  const n = Number(value);
  if (value.trim() === "" || !Number.isSafeInteger(n) || n < 0 || n > 65_535) {
    throw new RangeError("must be a port number (0-65535; 0: any free port) or off");
  }
  return n;
}

/** `--http-port` for commander: a port number (0: any free port) or `off`. */
export function httpPort(value: string): number | "off" {
  try {
    return parseHttpPort(value);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

/** The values of the options every process takes (see `processOptions`). */
export interface ProcessOptionValues {
  nats: string;
  namespace: string;
  leaseMs: number;
  id?: string;
  httpPort: number | "off";
  logLevel: string;
}

/**
 * The options every process takes, to add among its own (help lists them in that order).
 * What differs between the processes is passed: the help of --id and --lease-ms, and the
 * default --http-port.
 */
export function processOptions(own: {
  idHelp: string;
  leaseMsHelp: string;
  defaultHttpPort: number;
}) {
  return {
    nats: new Option("--nats <urls>", "NATS server URLs, comma-separated")
      .env("TROUPE_NATS_URL")
      .default("nats://127.0.0.1:4222"),
    namespace: new Option("--namespace <ns>", "the Troupe namespace")
      .env("TROUPE_NAMESPACE")
      .default("default"),
    id: new Option("--id <id>", own.idHelp),
    leaseMs: new Option("--lease-ms <ms>", own.leaseMsHelp)
      .env("TROUPE_LEASE_MS")
      .argParser(intAtLeast(30))
      .default(2000),
    httpPort: new Option(
      "--http-port <port>",
      "port of /healthz, /readyz, /metrics (0: any free; off: none)",
    )
      .env("TROUPE_HTTP_PORT")
      .argParser(httpPort)
      .default(own.defaultHttpPort),
    logLevel: new Option("--log-level <level>", "log level")
      .env("TROUPE_LOG_LEVEL")
      .choices(["trace", "debug", "info", "warn", "error", "fatal"])
      .default("info"),
  };
}

/** A comma-separated option value (`--nats`) as a list, blanks dropped. */
export function splitList(value: string): string[] {
  return value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

export interface TroupeProcess {
  /** The process log: JSON lines on stderr. */
  readonly logger: Logger;
  /** A stop signal was received. */
  stopping(): boolean;
  /**
   * Starts the service (exits when that fails: 2 on a configuration error, 1 otherwise) and
   * stops it on SIGTERM or SIGINT: stop, close the probes, flush telemetry, exit 0. A second
   * signal exits at once (1).
   */
  run(options: {
    start(): Promise<{ stop(): Promise<void> }>;
    /** Logged (fatal) when `start` fails. */
    startFailed: string;
    /** Logged when the first signal arrives. */
    stopping: string;
    closeProbes(): Promise<void>;
  }): void;
}

/**
 * The logger (to stderr), telemetry (OTLP trace export, only when OTEL_EXPORTER_OTLP_ENDPOINT
 * is set) and the handlers of uncaught errors, set up once, right after the options are parsed.
 */
export function startProcess(options: { service: string; logLevel: string }): TroupeProcess {
  const logger = pino(
    { level: options.logLevel, base: { service: options.service, pid: process.pid } },
    pino.destination({ dest: 2, sync: true }),
  );
  const telemetry = startTelemetry({ serviceName: options.service, logger });
  let stopping = false;

  function fail(err: unknown, what: string): never {
    logger.fatal({ err }, what);
    process.exit(isTroupeError(err) && err.code === ErrorCode.CONFIG_ERROR ? EXIT_CONFIG : 1);
  }

  process.on("unhandledRejection", (err) => {
    logger.error({ err }, "unhandled promise rejection");
  });
  process.on("uncaughtException", (err) => fail(err, "uncaught exception"));

  return {
    logger,
    stopping: () => stopping,
    run(service) {
      const started = service.start().catch((err) => fail(err, service.startFailed));

      async function shutdown(signal: string): Promise<void> {
        if (stopping) {
          logger.warn({ signal }, "second signal: exiting at once");
          process.exit(1);
        }
        stopping = true;
        logger.info({ signal }, service.stopping);
        try {
          // a signal during start-up stops the service once it is up
          await (await started).stop();
          await service.closeProbes();
        } catch (err) {
          logger.error({ err }, "stop failed");
          process.exit(1);
        }
        await telemetry.shutdown(); // flush the last spans
        process.exit(0);
      }

      process.on("SIGTERM", () => void shutdown("SIGTERM"));
      process.on("SIGINT", () => void shutdown("SIGINT"));
    },
  };
}
