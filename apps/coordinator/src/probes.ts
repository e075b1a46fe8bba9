/**
 * The coordinator's /healthz, /readyz and /metrics: readiness from the lease and the NATS
 * connection; the leader also reports the namespace's shard assignment and quarantine, read
 * when scraped (docs/operations.md lists the metrics).
 */
import { type ClusterStatus, listQuarantined, type QuarantinedReply } from "@troupe/coordinator";
import { type Readiness, type RenderedMetrics, serveProbes } from "@troupe/probes";
import type { Logger } from "@troupe/runtime";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";
import type { RunningCoordinator } from "./service.js";

export interface CoordinatorProbeState {
  /** Undefined while the service connects, creates or checks the namespace, and starts. */
  service(): RunningCoordinator | undefined;
  /** A stop signal was received (stepping down, or about to). */
  stopping(): boolean;
}

/** Lease rounds failing in a row past which a coordinator is not a usable standby. */
const FAILED_ROUNDS_LIMIT = 2;

/**
 * Ready means: connected, and either the leader or a standby that can take over (its lease
 * rounds read the cluster bucket).
 */
export function coordinatorReadiness(state: CoordinatorProbeState): Readiness {
  if (state.stopping()) {
    return { ready: false, reason: "stopping", message: "stepping down" };
  }
  const s = state.service();
  if (s === undefined) {
    return {
      ready: false,
      reason: "starting",
      message: "connecting to NATS, opening the namespace, starting",
    };
  }
  if (!s.connected()) {
    return { ready: false, reason: "nats-disconnected", message: "reconnecting to NATS" };
  }
  const h = s.coordinator.health();
  const details = { coordinator: s.coordinator.id, role: h.leader ? "leader" : "standby" };
  if (!h.running) return { ready: false, reason: "stopped", message: "not running", details };
  if (h.failedLeaseRounds >= FAILED_ROUNDS_LIMIT) {
    return {
      ready: false,
      reason: "lease-unreadable",
      message: `the last ${h.failedLeaseRounds} lease rounds failed (JetStream unavailable?)`,
      details,
    };
  }
  return { ready: true, details };
}

/** `--http-port` for commander (shared with the worker). */
export { httpPort } from "@troupe/probes";

/** What the leader reads once per scrape; a standby reads nothing. */
interface LeaderView {
  status: ClusterStatus;
  quarantine: QuarantinedReply | undefined;
}

/** A scrape must answer even when JetStream is slow: give the reads this long. */
const READ_TIMEOUT_MS = 2_000;

export interface CoordinatorMetrics {
  readonly registry: Registry;
  label(labels: { namespace: string; coordinator?: string }): void;
  render(): Promise<RenderedMetrics>;
}

export function createCoordinatorMetrics(
  state: CoordinatorProbeState,
  logger: Logger,
): CoordinatorMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  let view: LeaderView | undefined;
  const readErrors = new Counter({
    name: "troupe_coordinator_read_errors_total",
    help: "Scrapes whose reads of the cluster status or quarantine failed or timed out",
    registers: [registry],
  });

  const gauge = (name: string, help: string, read: () => number | undefined) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read() ?? 0);
      },
    });
  const health = () => state.service()?.coordinator.health();

  gauge("troupe_coordinator_leader", "1 while this coordinator holds the leader lease", () =>
    health()?.leader === true ? 1 : 0,
  );
  gauge(
    "troupe_coordinator_failed_lease_rounds",
    "Lease rounds that failed in a row",
    () => health()?.failedLeaseRounds,
  );
  gauge("troupe_nats_connected", "1 while the NATS connection is up", () =>
    state.service()?.connected() === true ? 1 : 0,
  );
  gauge("troupe_ready", "1 when /readyz answers 200", () =>
    coordinatorReadiness(state).ready ? 1 : 0,
  );
  // the rest is the namespace as the leader sees it: 0 on a standby, so sums over replicas hold
  gauge("troupe_shards_assigned", "Shards with a live owner (leader only)", () =>
    view === undefined ? 0 : view.status.shardCount - view.status.unassigned.length,
  );
  gauge(
    "troupe_shards_unassigned",
    "Shards without an owner: no worker pulls them (leader only)",
    () => view?.status.unassigned.length,
  );
  gauge(
    "troupe_workers",
    "Workers with a members entry (leader only)",
    () => view?.status.workers.filter((w) => w.heartbeatAgeMs >= 0).length,
  );
  gauge(
    "troupe_workers_draining",
    "Workers draining (leader only)",
    () => view?.status.workers.filter((w) => w.draining).length,
  );
  gauge(
    "troupe_assignment_version",
    "Version of the shard assignment (grows with every change; leader only)",
    () => view?.status.assignmentVersion,
  );
  new Gauge({
    name: "troupe_worker_shards",
    help: "Shards assigned to each worker (leader only)",
    labelNames: ["worker"],
    registers: [registry],
    collect() {
      this.reset();
      for (const w of view?.status.workers ?? []) {
        this.set({ worker: w.id }, w.shards.length);
      }
    },
  });
  gauge(
    "troupe_quarantined_agents",
    "Entries in the quarantine registry: agents and senders (leader only)",
    () => view?.quarantine?.agents.length,
  );
  gauge(
    "troupe_held_messages",
    "Messages held for quarantined agents, waiting for release (leader only)",
    () => view?.quarantine?.agents.reduce((n, a) => n + a.held, 0),
  );

  async function readView(): Promise<LeaderView | undefined> {
    const s = state.service();
    if (s === undefined || !s.coordinator.health().leader) return undefined;
    const status = await withTimeout(s.coordinator.status(), "the cluster status");
    let quarantine: QuarantinedReply | undefined;
    try {
      quarantine = await withTimeout(listQuarantined(s.nc, s.namespace), "the quarantine");
    } catch (err) {
      readErrors.inc();
      logger.warn({ err }, "metrics: could not read the quarantine");
    }
    return { status, quarantine };
  }

  return {
    registry,
    label(labels) {
      registry.setDefaultLabels(labels);
    },
    async render() {
      try {
        view = await readView();
      } catch (err) {
        view = undefined;
        readErrors.inc();
        logger.warn({ err }, "metrics: could not read the cluster status");
      }
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new TroupeError(
            ErrorCode.TIMEOUT,
            `reading ${what} took longer than ${READ_TIMEOUT_MS} ms`,
          ),
        ),
      READ_TIMEOUT_MS,
    );
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export interface CoordinatorProbes {
  readonly metrics: CoordinatorMetrics;
  /** The HTTP port, or undefined when the server is off. */
  readonly port: number | undefined;
  close(): Promise<void>;
}

/** Starts the HTTP server unless `port` is undefined (off); port 0 takes any free port. */
export async function startCoordinatorProbes(options: {
  port: number | undefined;
  namespace: string;
  state: CoordinatorProbeState;
  logger: Logger;
}): Promise<CoordinatorProbes> {
  const metrics = createCoordinatorMetrics(options.state, options.logger);
  metrics.label({ namespace: options.namespace });
  const server = await serveProbes({
    port: options.port,
    readiness: () => coordinatorReadiness(options.state),
    metrics: () => metrics.render(),
    logger: options.logger,
  });
  return { metrics, port: server.port, close: () => server.close() };
}
