/**
 * The worker's /healthz, /readyz and /metrics: readiness from the membership and the NATS
 * connection, Prometheus metrics read from the libraries' counters when scraped
 * (docs/operations.md lists them).
 */
import { type Readiness, type RenderedMetrics, serveProbes } from "@troupe/probes";
import type { HandledMessage, Logger } from "@troupe/runtime";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { RunningWorker } from "./worker.js";

/** What readiness and metrics read: the worker once started, and whether it is stopping. */
export interface WorkerProbeState {
  /** Undefined while the worker connects, waits for the namespace and joins. */
  worker(): RunningWorker | undefined;
  /** A stop signal was received (draining, or about to). */
  stopping(): boolean;
}

/**
 * Ready means: this worker serves shards. Not ready while starting, stopping, cut off from
 * NATS, fenced (lease lapsed), taking on shards assigned to it, or holding none.
 */
export function workerReadiness(state: WorkerProbeState): Readiness {
  if (state.stopping()) {
    return { ready: false, reason: "draining", message: "stopping: handing shards back" };
  }
  const w = state.worker();
  if (w === undefined) {
    return {
      ready: false,
      reason: "starting",
      message: "connecting to NATS, waiting for the namespace, joining the cluster",
    };
  }
  if (!w.connected()) {
    return { ready: false, reason: "nats-disconnected", message: "reconnecting to NATS" };
  }
  const h = w.membership.health();
  const details = { worker: w.id, shards: h.owned, pending: h.pending };
  if (h.draining) {
    return { ready: false, reason: "draining", message: "handing shards back", details };
  }
  if (!h.leaseHeld) {
    return {
      ready: false,
      reason: "lease-lapsed",
      message: "heartbeats are not stored: every shard is fenced",
      details,
    };
  }
  if (h.pending > 0) {
    return {
      ready: false,
      reason: "taking-shards",
      message: `${h.pending} assigned shard(s) not pulled yet`,
      details,
    };
  }
  if (h.owned === 0) {
    return {
      ready: false,
      reason: "no-shards",
      message: "the coordinator has assigned no shard to this worker (yet)",
      details,
    };
  }
  return { ready: true, details };
}

/** Latency buckets (s): sub-millisecond handlers up to retries with backoff. */
const HANDLING_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

export interface WorkerMetrics {
  readonly registry: Registry;
  /** The runtime's `onMessageHandled` hook: feeds the latency histogram. */
  onMessageHandled(m: HandledMessage): void;
  /** Labels every series with the namespace and (once known) the worker id. */
  label(labels: { namespace: string; worker?: string }): void;
  render(): Promise<RenderedMetrics>;
}

/** The worker's Prometheus registry; every counter is read from the libraries on scrape. */
export function createWorkerMetrics(state: WorkerProbeState): WorkerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const runtime = () => state.worker()?.runtime.stats();
  const backend = () => state.worker()?.backend.stats();
  const health = () => state.worker()?.membership.health();

  // a counter that mirrors a cumulative count kept by a library (reset, then set on scrape)
  const mirror = (name: string, help: string, read: () => number | undefined) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(read() ?? 0);
      },
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

  mirror(
    "troupe_messages_processed_total",
    "Messages whose handler succeeded",
    () => runtime()?.processed,
  );
  mirror(
    "troupe_messages_failed_total",
    "Handler attempts that failed (each retry counts)",
    () => runtime()?.failed,
  );
  mirror("troupe_message_retries_total", "Handler retries", () => runtime()?.retries);
  mirror(
    "troupe_messages_rejected_total",
    "Messages refused by a pipeline stage (parked, sender told)",
    () => runtime()?.rejected,
  );
  mirror(
    "troupe_messages_skipped_total",
    "Deliveries skipped because their effects were already stored (duplicates)",
    () => runtime()?.skipped,
  );
  mirror(
    "troupe_messages_published_total",
    "Frames published by agents",
    () => runtime()?.published,
  );
  mirror("troupe_snapshots_total", "Snapshot writes (one per batch)", () => runtime()?.snapshots);
  mirror("troupe_activations_total", "Agent activations", () => runtime()?.activations);
  mirror("troupe_passivations_total", "Agent passivations", () => runtime()?.passivations);
  mirror(
    "troupe_quarantines_total",
    "Agents and senders quarantined by this worker",
    () => runtime()?.quarantines,
  );
  mirror(
    "troupe_messages_held_total",
    "Messages of quarantined agents moved to the held stream",
    () => runtime()?.held,
  );
  mirror(
    "troupe_direct_refused_total",
    "Direct frames (replies, error notices) refused: not sealed with a known channel key, or failing authentication",
    () => runtime()?.directRefused,
  );
  gauge(
    "troupe_active_agents",
    "Agents active (in memory) on this worker",
    () => runtime()?.activeAgents,
  );

  mirror("troupe_inbox_deliveries_total", "Inbox messages delivered", () => backend()?.delivered);
  mirror(
    "troupe_redeliveries_total",
    "Inbox deliveries the server marked as redelivered",
    () => backend()?.redelivered,
  );
  mirror(
    "troupe_messages_parked_total",
    "Refused frames stored in the parked stream",
    () => backend()?.parked,
  );
  mirror(
    "troupe_fenced_operations_total",
    "Deliveries, acknowledgements and snapshot writes refused because the shard was fenced",
    () => backend()?.fenced,
  );
  mirror(
    "troupe_snapshot_conflicts_total",
    "Snapshot writes that lost their compare-and-set",
    () => backend()?.snapshotConflicts,
  );
  mirror(
    "troupe_consumer_resyncs_total",
    "Shard consumers rewound to their ack floor",
    () => backend()?.resyncs,
  );
  mirror(
    "troupe_append_failures_total",
    "Inbox appends that failed for good",
    () => backend()?.appendFailures,
  );

  gauge("troupe_shards_owned", "Shards this worker pulls from", () => health()?.owned);
  gauge(
    "troupe_shards_pending",
    "Shards assigned to this worker that it does not pull yet",
    () => health()?.pending,
  );
  mirror(
    "troupe_fencings_total",
    "Times this worker fenced shards (lease lapsed, or the assignment moved them on)",
    () => health()?.fences,
  );
  gauge("troupe_worker_draining", "1 while the worker drains", () =>
    state.stopping() || health()?.draining === true ? 1 : 0,
  );
  gauge("troupe_nats_connected", "1 while the NATS connection is up", () =>
    state.worker()?.connected() === true ? 1 : 0,
  );
  gauge("troupe_ready", "1 when /readyz answers 200", () => (workerReadiness(state).ready ? 1 : 0));

  const handling = new Histogram({
    name: "troupe_message_handling_seconds",
    help: "Time to handle one delivery: pipeline and handler, retries included",
    labelNames: ["agent_type", "outcome"],
    buckets: HANDLING_BUCKETS,
    registers: [registry],
  });

  return {
    registry,
    onMessageHandled(m) {
      const slash = m.address.indexOf("/");
      const agentType = slash > 0 ? m.address.slice(0, slash) : "endpoint";
      handling.observe({ agent_type: agentType, outcome: m.outcome }, m.durationMs / 1000);
    },
    label(labels) {
      registry.setDefaultLabels(labels);
    },
    async render() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}

export { httpPort } from "@troupe/probes";

export interface WorkerProbes {
  readonly metrics: WorkerMetrics;
  /** The HTTP port, or undefined when the server is off. */
  readonly port: number | undefined;
  close(): Promise<void>;
}

/**
 * Metrics always (the runtime's hook feeds them); the HTTP server unless `port` is
 * undefined (off). Port 0 takes any free port; the port is logged either way.
 */
export async function startWorkerProbes(options: {
  port: number | undefined;
  namespace: string;
  state: WorkerProbeState;
  logger: Logger;
}): Promise<WorkerProbes> {
  const metrics = createWorkerMetrics(options.state);
  metrics.label({ namespace: options.namespace });
  const server = await serveProbes({
    port: options.port,
    readiness: () => workerReadiness(options.state),
    metrics: () => metrics.render(),
    logger: options.logger,
  });
  return { metrics, port: server.port, close: () => server.close() };
}
