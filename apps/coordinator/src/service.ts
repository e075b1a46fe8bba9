/**
 * The coordinator service, reusable in-process: connect, ensure the namespace, compete for
 * the lease and lead; `stop()` steps down so a standby takes over at once.
 */

import type { NatsConnection } from "@nats-io/transport-node";
import { type Coordinator, createCoordinator } from "@troupe/coordinator";
import { connectNats, type EnsureNamespaceOptions, ensureNamespaceRetrying } from "@troupe/nats";
import { watchConnection } from "@troupe/probes";
import type { Logger } from "@troupe/runtime";

/** A logger that can make children (pino's shape); libraries get a child each. */
export interface ParentLogger extends Logger {
  child(bindings: Record<string, unknown>): ParentLogger;
}

export interface CoordinatorServiceOptions {
  servers: string[];
  namespace: string;
  /** The namespace's shard count: used when creating it, checked when it exists. */
  shardCount?: number;
  replicas?: number;
  /**
   * How long the inbox keeps messages, ms (default: a new inbox gets 7 days, an existing one
   * keeps its own). Given, an existing inbox with another max_age is changed to it.
   */
  inboxMaxAgeMs?: number;
  leaseMs?: number;
  handoffTimeoutMs?: number;
  id?: string;
  /**
   * Stops start-up while it waits for NATS or for the namespace to settle: the service then
   * closes the connection and rejects with SHUTDOWN. Past those waits it is not looked at.
   */
  signal?: AbortSignal;
  logger: ParentLogger;
}

export interface RunningCoordinator {
  readonly coordinator: Coordinator;
  readonly shardCount: number;
  readonly namespace: string;
  /** The connection (for reads the metrics make on scrape). */
  readonly nc: NatsConnection;
  /** The NATS connection is up (false while it reconnects, and once closed). */
  connected(): boolean;
  /** Step down, drain the connection. Idempotent. */
  stop(): Promise<void>;
}

export async function startCoordinatorService(
  options: CoordinatorServiceOptions,
): Promise<RunningCoordinator> {
  const log = options.logger;
  const nc = await connectNats(options.servers, {
    name: `troupe-coordinator${options.id === undefined ? "" : `-${options.id}`}`,
    logger: log.child({ component: "nats" }),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  });
  const connection = watchConnection(nc);
  try {
    const ensure: EnsureNamespaceOptions = { namespace: options.namespace };
    if (options.shardCount !== undefined) ensure.shardCount = options.shardCount;
    if (options.replicas !== undefined) ensure.replicas = options.replicas;
    if (options.inboxMaxAgeMs !== undefined) ensure.maxAgeMs = options.inboxMaxAgeMs;
    // a fresh JetStream cluster may still be electing stream leaders: wait that out
    const { shardCount, maxAgeMs } = await ensureNamespaceRetrying(nc, {
      ...ensure,
      logger: log.child({ component: "namespace" }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
    const coordinator = createCoordinator({
      nc,
      namespace: options.namespace,
      logger: log.child({ component: "coordinator" }),
      ...(options.id === undefined ? {} : { id: options.id }),
      ...(options.leaseMs === undefined ? {} : { leaseMs: options.leaseMs }),
      ...(options.handoffTimeoutMs === undefined
        ? {}
        : { handoffTimeoutMs: options.handoffTimeoutMs }),
    });
    await coordinator.start();
    log.info(
      {
        coordinator: coordinator.id,
        namespace: options.namespace,
        shardCount,
        inboxMaxAgeMs: maxAgeMs,
      },
      "coordinator service started",
    );
    let stopping: Promise<void> | undefined;
    const stop = async (): Promise<void> => {
      try {
        await coordinator.stop();
      } catch (err) {
        log.error({ err }, "could not step down");
      }
      try {
        await nc.drain();
      } catch (err) {
        log.error({ err }, "could not drain the NATS connection");
      }
      log.info({ coordinator: coordinator.id }, "coordinator service stopped");
    };
    return {
      coordinator,
      shardCount,
      namespace: options.namespace,
      nc,
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
