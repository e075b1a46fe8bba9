#!/usr/bin/env node
/** troupe-worker: hosts the agents of the shards the coordinator assigns to it. */
import {
  configErrorsExit,
  intAtLeast,
  type ProcessOptionValues,
  processOptions,
  splitList,
  startProcess,
} from "@troupe/probes";
import { readSealing } from "@troupe/runtime";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { Command, Option } from "commander";
import { startWorkerProbes, type WorkerProbes } from "./probes.js";
import { loadAgents, type RunningWorker, startWorker, type WorkerOptions } from "./worker.js";

const common = processOptions({
  idHelp: "worker id (default: host name, pid and a suffix)",
  leaseMsHelp:
    "worker liveness lease (ms): the coordinators' --lease-ms; past it the worker fences itself",
  defaultHttpPort: 8080,
});

const program = new Command()
  .name("troupe-worker")
  .description("Hosts Troupe agents: pulls the shards the coordinator assigns to this worker.")
  .addOption(common.nats)
  .addOption(common.namespace)
  .addOption(
    new Option("--agents <paths...>", "ES modules exporting agent definitions")
      .env("TROUPE_AGENTS")
      .makeOptionMandatory(),
  )
  .addOption(common.id.env("TROUPE_WORKER_ID"))
  .addOption(common.leaseMs)
  .addOption(
    new Option("--heartbeat-ms <ms>", "how often the worker stores its heartbeat (ms)")
      .env("TROUPE_HEARTBEAT_MS")
      .argParser(intAtLeast(10)),
  )
  .addOption(common.httpPort)
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
  .addOption(common.logLevel);

configErrorsExit(program).parse();
const opts = program.opts<
  ProcessOptionValues & {
    agents: string[] | string;
    heartbeatMs?: number;
    channelKeysDir?: string;
    sealWith?: string;
  }
>();

const troupe = startProcess({ service: "troupe-worker", logLevel: opts.logLevel });
const { logger } = troupe;

let running: RunningWorker | undefined;
let probes: WorkerProbes | undefined;

async function start(signal: AbortSignal): Promise<RunningWorker> {
  // probes first: /healthz answers (and /readyz says why not) while NATS is awaited
  const p = await startWorkerProbes({
    port: opts.httpPort === "off" ? undefined : opts.httpPort,
    namespace: opts.namespace,
    state: { worker: () => running, stopping: troupe.stopping },
    logger,
  });
  probes = p;
  // --agents a b, --agents a,b and TROUPE_AGENTS=a,b all name several modules
  const paths = (Array.isArray(opts.agents) ? opts.agents : [opts.agents]).flatMap(splitList);
  const agents = await loadAgents(paths);
  const sealing = await sealingOptions();
  const options: Parameters<typeof startWorker>[0] = {
    servers: splitList(opts.nats),
    namespace: opts.namespace,
    agents,
    logger,
    leaseMs: opts.leaseMs,
    onMessageHandled: p.metrics.onMessageHandled,
    // a stop signal during start-up: stop waiting for NATS or the namespace
    signal,
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

troupe.run({
  start,
  startFailed: "worker could not start",
  stopping: "signal received: draining",
  closeProbes: async () => {
    await probes?.close();
  },
});
