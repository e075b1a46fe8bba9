#!/usr/bin/env node
/** troupe-worker: hosts the agents of the shards the coordinator assigns to it. */
import { readSealing } from "@troupe/runtime";
import { startTelemetry } from "@troupe/telemetry";
import { ErrorCode, isTroupeError, TroupeError } from "@troupe/wire";
import { Command, InvalidArgumentError, Option } from "commander";
import { pino } from "pino";
import { httpPort, startWorkerProbes, type WorkerProbes } from "./probes.js";
import { loadAgents, type RunningWorker, startWorker, type WorkerOptions } from "./worker.js";

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
    new Option("--http-port <port>", "port of /healthz, /readyz, /metrics (0: any free; off: none)")
      .env("TROUPE_HTTP_PORT")
      .argParser(httpPort)
      .default(8080),
  )
  .addOption(
    new Option(
      "--channel-keys-dir <dir>",
      "seal agent traffic: a directory of channel keys, one file per key named after it (32 raw bytes, 64 hex digits or base64)",
    ).env("TROUPE_CHANNEL_KEYS_DIR"),
  )
  .addOption(
    new Option(
      "--seal-with <name>",
      "the key agent frames are sealed with (default: the only key; needed with several)",
    ).env("TROUPE_SEAL_WITH"),
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
  httpPort: number | "off";
  channelKeysDir?: string;
  sealWith?: string;
  logLevel: string;
}>();

const logger = pino(
  { level: opts.logLevel, base: { service: "troupe-worker", pid: process.pid } },
  pino.destination({ dest: 2, sync: true }),
);
// OTLP trace export, only when OTEL_EXPORTER_OTLP_ENDPOINT is set
const telemetry = startTelemetry({ serviceName: "troupe-worker", logger });

let stopping = false;
let running: RunningWorker | undefined;
let probes: WorkerProbes | undefined;

function fail(err: unknown, what: string): never {
  logger.fatal({ err }, what);
  process.exit(isTroupeError(err) && err.code === ErrorCode.CONFIG_ERROR ? EXIT_CONFIG : 1);
}

process.on("unhandledRejection", (err) => {
  logger.error({ err }, "unhandled promise rejection");
});
process.on("uncaughtException", (err) => fail(err, "uncaught exception"));

async function start(): Promise<RunningWorker> {
  // probes first: /healthz answers (and /readyz says why not) while NATS is awaited
  const p = await startWorkerProbes({
    port: opts.httpPort === "off" ? undefined : opts.httpPort,
    namespace: opts.namespace,
    state: { worker: () => running, stopping: () => stopping },
    logger,
  });
  probes = p;
  // --agents a b, --agents a,b and TROUPE_AGENTS=a,b all name several modules
  const paths = (Array.isArray(opts.agents) ? opts.agents : [opts.agents])
    .flatMap((p) => p.split(","))
    .map((p) => p.trim())
    .filter((p) => p !== "");
  const agents = await loadAgents(paths);
  const sealing = await sealingOptions();
  const options: Parameters<typeof startWorker>[0] = {
    servers: opts.nats
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== ""),
    namespace: opts.namespace,
    agents,
    logger,
    leaseMs: opts.leaseMs,
    onMessageHandled: p.metrics.onMessageHandled,
  };
  if (sealing !== undefined) options.sealing = sealing;
  if (opts.heartbeatMs !== undefined) options.heartbeatMs = opts.heartbeatMs;
  if (opts.id !== undefined) options.id = opts.id;
  running = await startWorker(options);
  p.metrics.label({ namespace: opts.namespace, worker: running.id });
  return running;
}

/** The channel keys from --channel-keys-dir, if given (a bad key file: CONFIG_ERROR, exit 2). */
async function sealingOptions(): Promise<WorkerOptions["sealing"]> {
  const dir = opts.channelKeysDir?.trim();
  const sealWith = opts.sealWith?.trim() || undefined;
  if (dir === undefined || dir === "") {
    if (sealWith !== undefined) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        "--seal-with (TROUPE_SEAL_WITH) names a key, but no --channel-keys-dir (TROUPE_CHANNEL_KEYS_DIR) gives the keys",
      );
    }
    return undefined;
  }
  return readSealing(dir, sealWith);
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
