#!/usr/bin/env node
/** troupe-coordinator: assigns shards to workers; leader-elected, run several for standby. */

import { DEFAULT_INBOX_MAX_AGE_MS } from "@troupe/nats/internal";
import {
  configErrorsExit,
  intAtLeast,
  type ProcessOptionValues,
  processOptions,
  splitList,
  startProcess,
} from "@troupe/probes";
import { Command, Option } from "commander";
import { inboxMaxAge } from "./inbox-max-age.js";
import { type CoordinatorProbes, startCoordinatorProbes } from "./probes.js";
import { type RunningCoordinator, startCoordinatorService } from "./service.js";

const common = processOptions({
  idHelp: "coordinator id (default: host name, pid and a suffix)",
  leaseMsHelp: "leader lease and worker liveness (ms)",
  defaultHttpPort: 8081,
});

const program = new Command()
  .name("troupe-coordinator")
  .description("Assigns shards to Troupe workers. Leader-elected: extra replicas are standbys.")
  .addOption(common.nats)
  .addOption(common.namespace)
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
    new Option(
      "--inbox-max-age <duration>",
      "how long the inbox keeps messages, the replay history (30m, 12h, 7d or ms; at least 2m); applied to an existing inbox too: a shorter one deletes older messages",
    )
      .env("TROUPE_INBOX_MAX_AGE")
      .argParser(inboxMaxAge)
      .default(DEFAULT_INBOX_MAX_AGE_MS, "7d"),
  )
  .addOption(common.leaseMs)
  .addOption(
    new Option("--handoff-timeout-ms <ms>", "how long a handoff waits for its confirmation (ms)")
      .argParser(intAtLeast(0))
      .default(10_000),
  )
  .addOption(common.id)
  .addOption(common.httpPort)
  .addOption(common.logLevel);

configErrorsExit(program).parse();
const opts = program.opts<
  ProcessOptionValues & {
    shards: number;
    replicas: number;
    inboxMaxAge: number;
    handoffTimeoutMs: number;
  }
>();

const troupe = startProcess({ service: "troupe-coordinator", logLevel: opts.logLevel });
const { logger } = troupe;

let running: RunningCoordinator | undefined;
let probes: CoordinatorProbes | undefined;

// an existing namespace keeps its count; only an explicit --shards must match it
const shardsGiven = program.getOptionValueSource("shards") !== "default";

async function start(signal: AbortSignal): Promise<RunningCoordinator> {
  // probes first: /healthz answers (and /readyz says why not) while NATS is awaited
  probes = await startCoordinatorProbes({
    port: opts.httpPort === "off" ? undefined : opts.httpPort,
    namespace: opts.namespace,
    state: { service: () => running, stopping: troupe.stopping },
    logger,
  });
  running = await startCoordinatorService({
    servers: splitList(opts.nats),
    namespace: opts.namespace,
    ...(shardsGiven ? { shardCount: opts.shards } : {}),
    replicas: opts.replicas,
    inboxMaxAgeMs: opts.inboxMaxAge,
    leaseMs: opts.leaseMs,
    handoffTimeoutMs: opts.handoffTimeoutMs,
    logger,
    // a stop signal during start-up: stop waiting for NATS or the namespace
    signal,
    ...(opts.id === undefined ? {} : { id: opts.id }),
  });
  probes.metrics.label({ namespace: opts.namespace, coordinator: running.coordinator.id });
  return running;
}

troupe.run({
  start,
  startFailed: "coordinator could not start",
  stopping: "signal received: stepping down",
  closeProbes: async () => {
    await probes?.close();
  },
});
