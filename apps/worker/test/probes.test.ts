/**
 * The worker's readiness rules and metrics rendering, on a stand-in worker (no NATS): what
 * /readyz says in each state, and that /metrics mirrors the libraries' counters.
 */
import type { MembershipHealth } from "@troupe/coordinator";
import { describe, expect, it } from "vitest";
import { createWorkerMetrics, httpPort, workerReadiness } from "../src/probes.js";
import type { RunningWorker } from "../src/worker.js";

function standIn(over: { health?: Partial<MembershipHealth>; connected?: boolean } = {}) {
  const health: MembershipHealth = {
    draining: false,
    leaseHeld: true,
    owned: 4,
    pending: 0,
    fences: 0,
    ...over.health,
  };
  const stats = {
    processed: 7,
    failed: 2,
    retries: 2,
    rejected: 1,
    skipped: 3,
    acked: 8,
    snapshots: 5,
    activations: 2,
    passivations: 1,
    quarantines: 1,
    held: 6,
    published: 4,
    lateReplies: 0,
    directRefused: 0,
    faults: 0,
    activeAgents: 1,
  };
  const backendStats = {
    delivered: 12,
    redelivered: 3,
    parked: 1,
    fenced: 0,
    snapshotConflicts: 2,
  };
  return {
    id: "w1",
    connected: () => over.connected ?? true,
    runtime: { stats: () => stats },
    backend: { stats: () => backendStats },
    membership: { health: () => health },
  } as unknown as RunningWorker;
}

const state = (worker: RunningWorker | undefined, stopping = false) => ({
  worker: () => worker,
  stopping: () => stopping,
});

describe("worker readiness", () => {
  it("is ready only when connected, holding its lease and pulling every assigned shard", () => {
    expect(workerReadiness(state(standIn()))).toMatchObject({ ready: true });
    const reasons = [
      [state(undefined), "starting"],
      [state(standIn(), true), "draining"],
      [state(standIn({ connected: false })), "nats-disconnected"],
      [state(standIn({ health: { draining: true } })), "draining"],
      [state(standIn({ health: { leaseHeld: false } })), "lease-lapsed"],
      [state(standIn({ health: { pending: 2 } })), "taking-shards"],
      [state(standIn({ health: { owned: 0 } })), "no-shards"],
    ] as const;
    for (const [s, reason] of reasons) {
      expect(workerReadiness(s)).toMatchObject({ ready: false, reason });
    }
  });
});

describe("worker metrics", () => {
  it("renders the libraries' counters and the handling histogram with the worker's labels", async () => {
    const m = createWorkerMetrics(state(standIn()));
    m.label({ namespace: "ns", worker: "w1" });
    m.onMessageHandled({ address: "counter/a", outcome: "ok", durationMs: 0.2 });
    m.onMessageHandled({ address: "counter/b", outcome: "ok", durationMs: 3 });
    m.onMessageHandled({ address: "#abcd", outcome: "rejected", durationMs: 1 });
    const { contentType, body } = await m.render();
    expect(contentType).toMatch(/^text\/plain/);
    const l = 'namespace="ns",worker="w1"';
    for (const line of [
      `troupe_messages_processed_total{${l}} 7`,
      `troupe_messages_failed_total{${l}} 2`,
      `troupe_active_agents{${l}} 1`,
      `troupe_passivations_total{${l}} 1`,
      `troupe_messages_held_total{${l}} 6`,
      `troupe_redeliveries_total{${l}} 3`,
      `troupe_snapshot_conflicts_total{${l}} 2`,
      `troupe_shards_owned{${l}} 4`,
      `troupe_fencings_total{${l}} 0`,
      `troupe_ready{${l}} 1`,
      `troupe_message_handling_seconds_count{${l},agent_type="counter",outcome="ok"} 2`,
      `troupe_message_handling_seconds_bucket{le="0.00025",${l},agent_type="counter",outcome="ok"} 1`,
      `troupe_message_handling_seconds_count{${l},agent_type="endpoint",outcome="rejected"} 1`,
    ]) {
      expect(body).toContain(line);
    }
    expect(body).toContain("# TYPE troupe_messages_processed_total counter");
    expect(body).toContain("# TYPE troupe_message_handling_seconds histogram");
    expect(body).toMatch(/^process_cpu_user_seconds_total\{/m); // prom-client's defaults
    // scraped again, the mirrored counters are not added up twice
    expect((await m.render()).body).toContain(`troupe_messages_processed_total{${l}} 7`);
  });

  it("renders zeros before the worker has started", async () => {
    const m = createWorkerMetrics(state(undefined));
    m.label({ namespace: "ns" });
    const { body } = await m.render();
    expect(body).toContain('troupe_messages_processed_total{namespace="ns"} 0');
    expect(body).toContain('troupe_ready{namespace="ns"} 0');
  });
});

describe("--http-port", () => {
  it("takes a port, 0 or off", () => {
    expect(httpPort("8080")).toBe(8080);
    expect(httpPort("0")).toBe(0);
    expect(httpPort("off")).toBe("off");
    for (const bad of ["", "-1", "65536", "80.5", "http"]) expect(() => httpPort(bad)).toThrow();
  });
});
