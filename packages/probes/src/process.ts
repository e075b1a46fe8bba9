/**
 * What the Troupe processes (worker, coordinator) share besides their probes: the common
 * command-line options, the log on stderr, telemetry, exit codes and the stop on SIGTERM/SIGINT.
 */
import { startTelemetry } from "@troupe/telemetry";
import { ErrorCode, isTroupeError } from "@troupe/wire";
import { type Command, InvalidArgumentError, Option } from "commander";
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
 * A usage error (an unknown option, a value an option refuses, a missing one) exits with
 * EXIT_CONFIG like any configuration error found at start; `--help` and `--version` exit 0.
 */
export function configErrorsExit(command: Command): Command {
  return command.exitOverride((err) => {
    process.exit(err.exitCode === 0 ? 0 : EXIT_CONFIG);
  });
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
   * stops it on SIGTERM or SIGINT: stop, close the probes, flush telemetry, exit 0. A signal
   * during start-up aborts `start`'s signal: start-up stops waiting, and the process exits 0
   * as soon as `start` has given up (or, once past its waits, has finished and been stopped).
   * A second signal exits at once (1).
   */
  run(options: {
    /**
     * Starts the service. `signal` is aborted when a stop signal arrives first: the waits of
     * start-up (for NATS, for the namespace) then give up, and `start` closes what it opened
     * and rejects with SHUTDOWN. Past its waits it may finish instead: it is then stopped.
     */
    start(signal: AbortSignal): Promise<{ stop(): Promise<void> }>;
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
      // the handlers before start: a signal must not meet the default action (exit at once)
      process.on("SIGTERM", () => void shutdown("SIGTERM"));
      process.on("SIGINT", () => void shutdown("SIGINT"));
      const abort = new AbortController();
      // a failure before any signal ends the process here; after one, `shutdown` decides
      const started = service.start(abort.signal).then(
        (running) => ({ ok: true as const, running }),
        (error: unknown) => {
          if (!stopping) fail(error, service.startFailed);
          return { ok: false as const, error };
        },
      );

      async function shutdown(signal: string): Promise<void> {
        if (stopping) {
          logger.warn({ signal }, "second signal: exiting at once");
          process.exit(1);
        }
        stopping = true;
        logger.info({ signal }, service.stopping);
        // start-up may wait for ever (for NATS, for the namespace): make it give up
        abort.abort();
        const outcome = await started;
        if (
          !outcome.ok &&
          !(isTroupeError(outcome.error) && outcome.error.code === ErrorCode.SHUTDOWN)
        ) {
          fail(outcome.error, service.startFailed);
        }
        try {
          // a signal during start-up past its waits stops the service once it is up
          if (outcome.ok) await outcome.running.stop();
          await service.closeProbes();
        } catch (err) {
          logger.error({ err }, "stop failed");
          process.exit(1);
        }
        if (!outcome.ok) logger.info({ signal }, "stopped before start-up finished");
        await telemetry.shutdown(); // flush the last spans
        process.exit(0);
      }
    },
  };
}
