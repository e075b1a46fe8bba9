#!/usr/bin/env node
/** troupe-worker: hosts the agents of the shards the coordinator assigns to it. */
import { ErrorCode, isTroupeError } from "@troupe/wire";
import { Command, InvalidArgumentError, Option } from "commander";
import { pino } from "pino";
import { loadAgents, type RunningWorker, startWorker } from "./worker.js";

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
  .name("troupe-worker")
  .description("Hosts Troupe agents: pulls the shards the coordinator assigns to this worker.")
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
    new Option("--agents <paths...>", "ES modules exporting agent definitions")
      .env("TROUPE_AGENTS")
      .makeOptionMandatory(),
  )
  .addOption(
    new Option("--id <id>", "worker id (default: host name, pid and a suffix)").env(
      "TROUPE_WORKER_ID",
    ),
  )
  .addOption(
    new Option(
      "--lease-ms <ms>",
      "worker liveness lease (ms): the coordinators' --lease-ms; past it the worker fences itself",
    )
      .env("TROUPE_LEASE_MS")
      .argParser(intAtLeast(30))
      .default(2000),
  )
  .addOption(
    new Option("--heartbeat-ms <ms>", "how often the worker stores its heartbeat (ms)")
      .env("TROUPE_HEARTBEAT_MS")
      .argParser(intAtLeast(10)),
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
  agents: string[] | string;
  id?: string;
  leaseMs: number;
  heartbeatMs?: number;
  logLevel: string;
}>();

const logger = pino(
  { level: opts.logLevel, base: { service: "troupe-worker", pid: process.pid } },
  pino.destination({ dest: 2, sync: true }),
);

let stopping = false;

function fail(err: unknown, what: string): never {
  logger.fatal({ err }, what);
  process.exit(isTroupeError(err) && err.code === ErrorCode.CONFIG_ERROR ? EXIT_CONFIG : 1);
}

process.on("unhandledRejection", (err) => {
  logger.error({ err }, "unhandled promise rejection");
});
process.on("uncaughtException", (err) => fail(err, "uncaught exception"));

async function start(): Promise<RunningWorker> {
  const paths = Array.isArray(opts.agents) ? opts.agents : opts.agents.split(",");
  const agents = await loadAgents(paths);
  const options: Parameters<typeof startWorker>[0] = {
    servers: opts.nats
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== ""),
    namespace: opts.namespace,
    agents,
    logger,
    leaseMs: opts.leaseMs,
  };
  if (opts.heartbeatMs !== undefined) options.heartbeatMs = opts.heartbeatMs;
  if (opts.id !== undefined) options.id = opts.id;
  return startWorker(options);
}

const started = start().catch((err) => fail(err, "worker could not start"));

async function shutdown(signal: string): Promise<void> {
  if (stopping) {
    logger.warn({ signal }, "second signal: exiting at once");
    process.exit(1);
  }
  stopping = true;
  logger.info({ signal }, "signal received: draining");
  try {
    // a signal during start-up stops the worker once it is up
    const worker = await started;
    await worker.stop();
  } catch (err) {
    logger.error({ err }, "stop failed");
    process.exit(1);
  }
  process.exit(0);
}

process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
