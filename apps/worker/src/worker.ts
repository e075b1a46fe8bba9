/**
 * The worker, reusable in-process: connect, ensure the namespace, host the agents on the
 * JetStream backend and join the cluster; `stop()` drains (hands shards back) and closes.
 */
import { hostname } from "node:os";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import {
  joinCluster,
  type Membership,
  quarantineThroughLeader,
  serveWorkerQuarantine,
} from "@troupe/coordinator";
import { defaultNodeId } from "@troupe/coordinator/internal";
import { connectNats, createNatsBackend, type NatsBackend, openNamespace } from "@troupe/nats";
import { watchConnection } from "@troupe/probes";
import {
  type AgentDefinition,
  createRuntime,
  type HandledMessage,
  type Logger,
  type Runtime,
  type SealingConfig,
} from "@troupe/runtime";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { defaultXChaCha20Poly1305 } from "@troupe/wire/internal";
import { serveReplay } from "./replay-control.js";

/** A logger that can make children (pino's shape); libraries get a child each. */
export interface ParentLogger extends Logger {
  child(bindings: Record<string, unknown>): ParentLogger;
}

export interface WorkerOptions {
  /** NATS server URLs. */
  servers: string[];
  namespace: string;
  agents: readonly AgentDefinition[];
  /** Worker id (default: host name, pid and a random suffix). */
  id?: string;
  heartbeatMs?: number;
  leaseMs?: number;
  /** Told about every message the runtime handled, with its duration (the latency histogram). */
  onMessageHandled?: (m: HandledMessage) => void;
  /** Seal agent traffic with these channel keys (see RuntimeConfig.sealing). */
  sealing?: SealingConfig;
  /**
   * Stops start-up while it waits for NATS or for the namespace: startWorker then closes the
   * connection and rejects with SHUTDOWN. Past those waits it is not looked at.
   */
  signal?: AbortSignal;
  logger: ParentLogger;
}

export interface RunningWorker {
  readonly id: string;
  readonly runtime: Runtime;
  readonly membership: Membership;
  readonly backend: NatsBackend;
  readonly shardCount: number;
  /** The NATS connection is up (false while it reconnects, and once closed). */
  connected(): boolean;
  /** Drain (hand every shard back), shut the runtime down, drain the connection. Idempotent. */
  stop(): Promise<void>;
}

export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  const log = options.logger;
  if (options.agents.length === 0) {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, "a worker needs at least one agent definition");
  }
  const nc = await connectNats(options.servers, {
    name: `troupe-worker${options.id === undefined ? "" : `-${options.id}`}`,
    logger: log.child({ component: "nats" }),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  });
  const connection = watchConnection(nc);
  try {
    // the coordinator creates the namespace (shard count, replicas): wait for it
    const namespaceInfo = await openNamespace(nc, {
      namespace: options.namespace,
      logger: log.child({ component: "namespace" }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
    const { shardCount } = namespaceInfo;
    const backend = await createNatsBackend({
      nc,
      namespaceInfo,
      logger: log.child({ component: "backend" }),
    });
    const workerId = options.id ?? defaultNodeId(hostname(), process.pid);
    const runtime = await createRuntime({
      agents: options.agents,
      backend,
      logger: log.child({ component: "runtime" }),
      // frames must fit in one NATS message
      limits: { maxFrameBytes: backend.maxFrameBytes },
      // a sender of bad frames hosted by another worker: its owner quarantines it at once
      quarantineElsewhere: quarantineThroughLeader(nc, options.namespace),
      // the id is chosen here (not by joinCluster) so that spans can name the worker
      spanAttributes: { "troupe.worker.id": workerId },
      ...(options.onMessageHandled === undefined
        ? {}
        : { onMessageHandled: options.onMessageHandled }),
      ...(options.sealing === undefined ? {} : { sealing: options.sealing }),
    });
    let membership: Membership;
    try {
      membership = await joinCluster({
        nc,
        namespace: options.namespace,
        backend,
        runtime,
        agentTypes: options.agents.map((a) => a.type),
        logger: log.child({ component: "membership" }),
        id: workerId,
        ...(options.heartbeatMs === undefined ? {} : { heartbeatMs: options.heartbeatMs }),
        ...(options.leaseMs === undefined ? {} : { leaseMs: options.leaseMs }),
      });
    } catch (e) {
      await runtime.shutdown().catch(() => {});
      throw e;
    }
    // the worker's control subjects: replay and quarantine answer for the shards it owns
    const control = {
      nc,
      namespace: options.namespace,
      workerId: membership.id,
      runtime,
      shardCount,
      ownedShards: () => membership.ownedShards(),
    };
    const replaySub = serveReplay({ ...control, logger: log.child({ component: "replay" }) });
    const quarantineControl = serveWorkerQuarantine({
      ...control,
      logger: log.child({ component: "quarantine" }),
    });
    log.info(
      {
        worker: membership.id,
        namespace: options.namespace,
        shardCount,
        agentTypes: options.agents.map((a) => a.type),
        sealing:
          options.sealing === undefined
            ? "off"
            : {
                sealWith: options.sealing.sealWith ?? Object.keys(options.sealing.keys)[0],
                keys: Object.keys(options.sealing.keys),
                aead: defaultXChaCha20Poly1305.name,
              },
      },
      "worker started",
    );
    let stopping: Promise<void> | undefined;
    const stop = async (): Promise<void> => {
      const t0 = Date.now();
      log.info({ worker: membership.id }, "worker stopping: draining");
      replaySub.unsubscribe();
      quarantineControl.stop();
      await step(log, "leave the cluster", () => membership.leave());
      await step(log, "shut the runtime down", () => runtime.shutdown());
      await step(log, "drain the NATS connection", () => nc.drain());
      log.info({ worker: membership.id, ms: Date.now() - t0 }, "worker stopped");
    };
    return {
      id: membership.id,
      runtime,
      membership,
      backend,
      shardCount,
      connected: () => connection.connected(),
      stop() {
        stopping ??= stop();
        return stopping;
      },
    };
  } catch (e) {
    await nc.close().catch(() => {});
    throw e;
  }
}

async function step(log: Logger, what: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    log.error({ err }, `could not ${what}`);
  }
}

const isAgentDefinition = (v: unknown): v is AgentDefinition =>
  typeof v === "object" && v !== null && (v as { kind?: unknown }).kind === "troupe.agent";

/**
 * Imports ES modules and collects every export that is an agent definition
 * (`defineAgent(...)` result). A module that exports none is a configuration error.
 */
export async function loadAgents(paths: readonly string[]): Promise<AgentDefinition[]> {
  if (paths.length === 0) {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, "no agent modules given (--agents <path...>)");
  }
  const found = new Set<AgentDefinition>();
  for (const path of paths) {
    const url = pathToFileURL(resolve(path)).href;
    let mod: Record<string, unknown>;
    try {
      mod = (await import(url)) as Record<string, unknown>;
    } catch (e) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `cannot load agent module ${path}: ${e instanceof Error ? e.message : String(e)}`,
        { cause: e },
      );
    }
    const defs = Object.values(mod).filter(isAgentDefinition);
    if (defs.length === 0) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `${path} exports no agent definitions (export the results of defineAgent(...))`,
      );
    }
    for (const d of defs) found.add(d);
  }
  return [...found];
}
