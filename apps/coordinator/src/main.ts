#!/usr/bin/env node
import { startTelemetry } from "@troupe/telemetry";
import { ErrorCode, isTroupeError } from "@troupe/wire";
/** troupe-coordinator: assigns shards to workers; leader-elected, run several for standby. */
import { Command, InvalidArgumentError, Option } from "commander";
import { pino } from "pino";
import { type CoordinatorProbes, httpPort, startCoordinatorProbes } from "./probes.js";
import { type RunningCoordinator, startCoordinatorService } from "./service.js";

const EXIT_CONFIG = 2;

function intAtLeast(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < min) {
      throw new InvalidArgumentError(`must be an integer >= ${min}`);
    }
    return n;
  };
}

const program = new Command()
  .name("troupe-coordinator")
  .description("Assigns shards to Troupe workers. Leader-elected: extra replicas are standbys.")
  .addOption(
    new Option("--nats <urls>", "NATS server URLs, comma-separated")
      .env("TROUPE_NATS_URL")
      .default("nats://127.0.0.1:4222"),
  )
  .addOption(
    new Option("--namespace <ns>", "the Troupe namespace")
      .env("TROUPE_NAMESPACE")
      .default("default"),
  )
  .addOption(
    new Option("--shards <n>", "shard count of the namespace (fixed when it is created)")
      .env("TROUPE_SHARDS")
      .argParser(intAtLeast(1))
      .default(64),
  )
  .addOption(
    new Option("--replicas <n>", "replicas of the streams and buckets (1 or 3)")
      .env("TROUPE_REPLICAS")
      .argParser(intAtLeast(1))
      .default(1),
  )
  .addOption(
    new Option("--lease-ms <ms>", "leader lease and worker liveness (ms)")
      .env("TROUPE_LEASE_MS")
      .argParser(intAtLeast(30))
      .default(2000),
  )
  .addOption(
    new Option("--handoff-timeout-ms <ms>", "how long a handoff waits for its confirmation (ms)")
      .argParser(intAtLeast(0))
      .default(10_000),
  )
  .addOption(new Option("--id <id>", "coordinator id (default: host name, pid and a suffix)"))
  .addOption(
    new Option("--http-port <port>", "port of /healthz, /readyz, /metrics (0: any free; off: none)")
      .env("TROUPE_HTTP_PORT")
      .argParser(httpPort)
      .default(8081),
  )
  .addOption(
    new Option("--log-level <level>", "log level")
      .env("TROUPE_LOG_LEVEL")
      .choices(["trace", "debug", "info", "warn", "error", "fatal"])
      .default("info"),
  );

program.parse();
const opts = program.opts<{
  nats: string;
  namespace: string;
  shards: number;
  replicas: number;
  leaseMs: number;
  handoffTimeoutMs: number;
  id?: string;
  httpPort: number | "off";
  logLevel: string;
}>();

const logger = pino(
  { level: opts.logLevel, base: { service: "troupe-coordinator", pid: process.pid } },
  pino.destination({ dest: 2, sync: true }),
);
// OTLP trace export, only when OTEL_EXPORTER_OTLP_ENDPOINT is set
const telemetry = startTelemetry({ serviceName: "troupe-coordinator", logger });

let stopping = false;
let running: RunningCoordinator | undefined;
let probes: CoordinatorProbes | undefined;

function fail(err: unknown, what: string): never {
  logger.fatal({ err }, what);
  process.exit(isTroupeError(err) && err.code === ErrorCode.CONFIG_ERROR ? EXIT_CONFIG : 1);
}

process.on("unhandledRejection", (err) => {
  logger.error({ err }, "unhandled promise rejection");
});
process.on("uncaughtException", (err) => fail(err, "uncaught exception"));

// an existing namespace keeps its count; only an explicit --shards must match it
const shardsGiven = program.getOptionValueSource("shards") !== "default";

async function start(): Promise<RunningCoordinator> {
  // probes first: /healthz answers (and /readyz says why not) while NATS is awaited
  probes = await startCoordinatorProbes({
    port: opts.httpPort === "off" ? undefined : opts.httpPort,
    namespace: opts.namespace,
    state: { service: () => running, stopping: () => stopping },
    logger,
  });
  running = await startCoordinatorService({
    servers: opts.nats
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== ""),
    namespace: opts.namespace,
    ...(shardsGiven ? { shardCount: opts.shards } : {}),
    replicas: opts.replicas,
    leaseMs: opts.leaseMs,
    handoffTimeoutMs: opts.handoffTimeoutMs,
    logger,
    ...(opts.id === undefined ? {} : { id: opts.id }),
  });
  probes.metrics.label({ namespace: opts.namespace, coordinator: running.coordinator.id });
  return running;
}

const started = start().catch((err) => fail(err, "coordinator could not start"));

async function shutdown(signal: string): Promise<void> {
  if (stopping) {
    logger.warn({ signal }, "second signal: exiting at once");
    process.exit(1);
  }
  stopping = true;
  logger.info({ signal }, "signal received: stepping down");
  try {
    await (await started).stop();
    await probes?.close();
  } catch (err) {
    logger.error({ err }, "stop failed");
    process.exit(1);
  }
  await telemetry.shutdown(); // flush the last spans
  process.exit(0);
}

process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
