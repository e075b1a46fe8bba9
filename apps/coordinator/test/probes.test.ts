/**
 * The coordinator's readiness rules and metrics rendering, on a stand-in service (no NATS):
 * what /readyz says in each state; a standby reports no namespace-wide figures.
 */
import type { CoordinatorHealth } from "@troupe/coordinator";
import { describe, expect, it } from "vitest";
import { coordinatorReadiness, createCoordinatorMetrics, httpPort } from "../src/probes.js";
import type { RunningCoordinator } from "../src/service.js";

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

function standIn(over: { health?: Partial<CoordinatorHealth>; connected?: boolean } = {}) {
  const health: CoordinatorHealth = {
    running: true,
    leader: false,
    failedLeaseRounds: 0,
    ...over.health,
  };
  return {
    namespace: "ns",
    connected: () => over.connected ?? true,
    coordinator: {
      id: "c1",
      health: () => health,
      status: () => Promise.reject(new Error("a standby's status is not read for metrics")),
    },
  } as unknown as RunningCoordinator;
}

const state = (service: RunningCoordinator | undefined, stopping = false) => ({
  service: () => service,
  stopping: () => stopping,
});

describe("coordinator readiness", () => {
  it("is ready when connected and running, as leader or standby", () => {
    expect(coordinatorReadiness(state(standIn()))).toMatchObject({
      ready: true,
      details: { role: "standby" },
    });
    expect(coordinatorReadiness(state(standIn({ health: { leader: true } })))).toMatchObject({
      ready: true,
      details: { role: "leader" },
    });
    const reasons = [
      [state(undefined), "starting"],
      [state(standIn(), true), "stopping"],
      [state(standIn({ connected: false })), "nats-disconnected"],
      [state(standIn({ health: { running: false } })), "stopped"],
      [state(standIn({ health: { failedLeaseRounds: 2 } })), "lease-unreadable"],
    ] as const;
    for (const [s, reason] of reasons) {
      expect(coordinatorReadiness(s)).toMatchObject({ ready: false, reason });
    }
    expect(coordinatorReadiness(state(standIn({ health: { failedLeaseRounds: 1 } }))).ready).toBe(
      true,
    );
  });
});

describe("coordinator metrics", () => {
  it("a standby renders its own state and zeros for the namespace-wide gauges", async () => {
    const m = createCoordinatorMetrics(state(standIn()), quiet);
    m.label({ namespace: "ns", coordinator: "c1" });
    const { body } = await m.render();
    const l = 'namespace="ns",coordinator="c1"';
    for (const line of [
      `troupe_coordinator_leader{${l}} 0`,
      `troupe_ready{${l}} 1`,
      `troupe_nats_connected{${l}} 1`,
      `troupe_shards_assigned{${l}} 0`,
      `troupe_shards_unassigned{${l}} 0`,
      `troupe_quarantined_agents{${l}} 0`,
      `troupe_coordinator_read_errors_total{${l}} 0`,
    ]) {
      expect(body).toContain(line);
    }
    expect(body).not.toMatch(/^troupe_worker_shards\{/m);
  });
});

describe("--http-port", () => {
  it("takes a port, 0 or off", () => {
    expect(httpPort("8081")).toBe(8081);
    expect(httpPort("off")).toBe("off");
    expect(() => httpPort("x")).toThrow();
  });
});
