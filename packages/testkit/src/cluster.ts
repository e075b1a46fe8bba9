/** A JetStream cluster of nats-server processes on loopback, routed to each other. */

import { findNatsServer } from "./binary.js";
import { isPortInUse, TestkitError, TestkitErrorCode } from "./errors.js";
import { type Logger, silentLogger } from "./logger.js";
import { freePorts } from "./ports.js";
import { createServerProcess, makeDataDir, type NatsServerHandle } from "./server.js";

export interface NatsClusterOptions {
  /** Number of nodes. Default 3 (the smallest cluster that survives losing one node). */
  nodes?: number;
  /** The cluster name; servers are named `<name>-<i>`. Default "troupe". */
  name?: string;
  maxPayload?: number;
  /** Extra configuration text appended to every node's config file. */
  config?: string;
  binary?: string;
  /** How long to wait for the nodes and the meta leader. Default 30 s. */
  startTimeoutMs?: number;
  stopTimeoutMs?: number;
  logger?: Logger;
}

export interface NatsClusterHandle {
  readonly name: string;
  readonly servers: readonly NatsServerHandle[];
  /** Every node's client URL (connect with all of them to survive a node's death). */
  readonly urls: string[];
  /** The JetStream meta leader's server name as a running node reports it, if any. */
  metaLeader(): Promise<string | undefined>;
  /**
   * Waits until every running node agrees on one meta leader and the leader sees every
   * other running node as a current peer, so creating an R<running nodes> stream works.
   */
  waitForMetaLeader(timeoutMs?: number): Promise<string>;
  killNode(index: number, signal?: NodeJS.Signals): Promise<void>;
  stopNode(index: number): Promise<void>;
  /** Restarts node `index` (same ports and data) and waits until the cluster is whole. */
  restartNode(index: number): Promise<void>;
  /** Stops every node and removes their data dirs. Idempotent. */
  cleanup(): Promise<void>;
}

interface JszMeta {
  server_name?: string;
  meta_cluster?: {
    leader?: string;
    cluster_size?: number;
    replicas?: { name: string; current: boolean; offline?: boolean }[];
  };
}

const START_ATTEMPTS = 5;
const POLL_MS = 50;

async function jsz(monitorUrl: string): Promise<JszMeta | undefined> {
  try {
    const res = await fetch(`${monitorUrl}/jsz`, { signal: AbortSignal.timeout(2000) });
    if (!res.ok) return undefined;
    return (await res.json()) as JszMeta;
  } catch {
    return undefined;
  }
}

class Cluster implements NatsClusterHandle {
  private cleaning: Promise<void> | undefined;

  constructor(
    readonly name: string,
    readonly servers: readonly NatsServerHandle[],
    private readonly startTimeoutMs: number,
  ) {}

  get urls(): string[] {
    return this.servers.map((s) => s.url);
  }

  private node(index: number): NatsServerHandle {
    const server = this.servers[index];
    if (server === undefined) {
      throw new TestkitError(
        TestkitErrorCode.INVALID_ARGUMENT,
        `no node ${index} in a cluster of ${this.servers.length}`,
      );
    }
    return server;
  }

  /** Why the cluster is not ready yet, or the leader's name when it is. */
  private async check(): Promise<{ leader?: string; reason: string }> {
    const running = this.servers.filter((s) => s.running);
    const views = await Promise.all(
      running.map(async (s) => ({ server: s, info: await jsz(s.monitorUrl ?? "") })),
    );
    const leaders = new Set(views.map((v) => v.info?.meta_cluster?.leader ?? ""));
    const [leader] = leaders;
    if (leaders.size !== 1 || leader === undefined || leader === "") {
      const seen = views.map(
        (v) => `${v.server.serverName}→${v.info?.meta_cluster?.leader || "?"}`,
      );
      return { reason: `no agreed meta leader (${seen.join(", ")})` };
    }
    const leaderView = views.find((v) => v.server.serverName === leader);
    if (leaderView === undefined) return { reason: `meta leader ${leader} is not a running node` };
    const peers = leaderView.info?.meta_cluster?.replicas ?? [];
    for (const s of running) {
      if (s.serverName === leader) continue;
      const peer = peers.find((p) => p.name === s.serverName);
      if (peer === undefined || !peer.current || peer.offline === true) {
        return { reason: `meta leader ${leader} does not see ${s.serverName} as a current peer` };
      }
    }
    return { leader, reason: "" };
  }

  async metaLeader(): Promise<string | undefined> {
    for (const s of this.servers) {
      if (!s.running || s.monitorUrl === undefined) continue;
      const leader = (await jsz(s.monitorUrl))?.meta_cluster?.leader;
      if (leader !== undefined && leader !== "") return leader;
    }
    return undefined;
  }

  async waitForMetaLeader(timeoutMs = this.startTimeoutMs): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { leader, reason } = await this.check();
      if (leader !== undefined) return leader;
      if (Date.now() >= deadline) {
        throw new TestkitError(
          TestkitErrorCode.CLUSTER_NOT_READY,
          `cluster ${this.name} not ready after ${timeoutMs} ms: ${reason}`,
          { serverLog: this.servers.map((s) => `[${s.serverName}]\n${s.logTail(10)}`).join("\n") },
        );
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  killNode(index: number, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    return this.node(index).kill(signal);
  }

  stopNode(index: number): Promise<void> {
    return this.node(index).stop();
  }

  async restartNode(index: number): Promise<void> {
    await this.node(index).restart();
    await this.waitForMetaLeader();
  }

  cleanup(): Promise<void> {
    this.cleaning ??= Promise.all(this.servers.map((s) => s.cleanup())).then(() => undefined);
    return this.cleaning;
  }
}

/** Starts an n-node JetStream cluster and waits until its meta leader is elected. */
export async function startNatsCluster(
  options: NatsClusterOptions = {},
): Promise<NatsClusterHandle> {
  const nodes = options.nodes ?? 3;
  if (!Number.isInteger(nodes) || nodes < 1) {
    throw new TestkitError(TestkitErrorCode.INVALID_ARGUMENT, `nodes must be >= 1, got ${nodes}`);
  }
  const name = options.name ?? "troupe";
  const binary = options.binary ?? findNatsServer();
  const startTimeoutMs = options.startTimeoutMs ?? 30_000;
  const logger = options.logger ?? silentLogger;
  for (let attempt = 1; ; attempt++) {
    const deadline = Date.now() + startTimeoutMs;
    const ports = await freePorts(nodes * 3);
    const at = (i: number) => ports[i] as number;
    const clusterPorts = Array.from({ length: nodes }, (_, i) => at(i * 3 + 2));
    const servers = Array.from({ length: nodes }, (_, i) => {
      const dataDir = makeDataDir(`troupe-nats-${name}-${i}-`);
      return createServerProcess({
        binary,
        dataDir,
        config: {
          serverName: `${name}-${i}`,
          port: at(i * 3),
          monitorPort: at(i * 3 + 1),
          storeDir: dataDir,
          maxPayload: options.maxPayload,
          cluster: { name, port: at(i * 3 + 2), routes: clusterPorts.filter((_, j) => j !== i) },
          extra: options.config,
        },
        startTimeoutMs,
        stopTimeoutMs: options.stopTimeoutMs ?? 5_000,
        logger,
      });
    });
    const cluster = new Cluster(name, servers, startTimeoutMs);
    const started = await Promise.allSettled(servers.map((s) => s.start()));
    const failure = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    try {
      if (failure !== undefined) throw failure.reason;
      await cluster.waitForMetaLeader(Math.max(1000, deadline - Date.now()));
      return cluster;
    } catch (e) {
      await cluster.cleanup();
      if (!isPortInUse(e) || attempt >= START_ATTEMPTS) throw e;
      logger.debug({ attempt, err: e }, "port taken before a cluster node bound it; retrying");
    }
  }
}
