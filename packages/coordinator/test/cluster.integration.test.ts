/**
 * The coordinator and membership against a real nats-server: in-process coordinators and
 * workers (real NatsBackend + createRuntime hosting the counter example).
 */
import { type NatsConnection, connect as natsConnect } from "@nats-io/transport-node";
import { type CounterValue, counter } from "@troupe/example-counter";
import { connect, createNatsBackend, ensureNamespace } from "@troupe/nats";
import { createRuntime, type Runtime } from "@troupe/runtime";
import { type NatsServerHandle, startNatsServer } from "@troupe/testkit";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  type ClusterStatus,
  type Coordinator,
  createCoordinator,
  joinCluster,
  type Membership,
} from "../src/index.js";
import { LEADER_KEY } from "../src/protocol.js";

let server: NatsServerHandle;
const connections: NatsConnection[] = [];
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  server = await startNatsServer();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  await Promise.all(connections.splice(0).map((nc) => nc.close().catch(() => {})));
});

afterAll(async () => {
  await server?.cleanup();
});

async function natsConnection(): Promise<NatsConnection> {
  const nc = await natsConnect({ servers: server.url });
  connections.push(nc);
  return nc;
}

async function waitFor<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function startCoordinator(namespace: string, id: string, leaseMs: number) {
  const nc = await natsConnection();
  const c = createCoordinator({ nc, namespace, id, leaseMs, handoffTimeoutMs: 5_000 });
  await c.start();
  cleanups.push(() => c.stop());
  return { c, nc };
}

interface TestWorker {
  id: string;
  runtime: Runtime;
  membership: Membership;
  stop(): Promise<void>;
}

async function startWorker(namespace: string, id: string, leaseMs: number): Promise<TestWorker> {
  const nc = await natsConnection();
  const backend = await createNatsBackend({ nc, namespace });
  const runtime = await createRuntime({ agents: [counter], backend });
  const membership = await joinCluster({
    nc,
    namespace,
    backend,
    runtime,
    id,
    heartbeatMs: Math.round(leaseMs / 4),
    leaseMs,
    agentTypes: [counter.type],
  });
  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      await membership.leave();
      await runtime.shutdown();
    })();
    return stopped;
  };
  cleanups.push(stop);
  return { id, runtime, membership, stop };
}

const shardsOf = (s: ClusterStatus, id: string) => s.workers.find((w) => w.id === id)?.shards;

function settledStatus(c: Coordinator, ids: string[]) {
  return waitFor(`a balanced assignment over ${ids.join(", ")}`, async () => {
    const s = await c.status();
    if (s.unassigned.length > 0) return undefined;
    const counts = ids.map((id) => shardsOf(s, id)?.length ?? 0);
    const floor = Math.floor(s.shardCount / ids.length);
    const owners = new Set(s.workers.filter((w) => w.shards.length > 0).map((w) => w.id));
    const balanced =
      counts.every((n) => n === floor || n === floor + 1) &&
      [...owners].every((o) => ids.includes(o));
    return balanced ? s : undefined;
  });
}

describe("leader election", () => {
  it("elects one leader; a standby takes over on step-down and after a crash", async () => {
    const namespace = "elect";
    const leaseMs = 600;
    const setupNc = await natsConnection();
    await ensureNamespace(setupNc, { namespace, shardCount: 4 });
    const a = await startCoordinator(namespace, "coord-a", leaseMs);
    const b = await startCoordinator(namespace, "coord-b", leaseMs);
    const first = await waitFor("a leader", () =>
      a.c.isLeader ? a : b.c.isLeader ? b : undefined,
    );
    const other = first === a ? b : a;
    // never two leaders at once
    for (let i = 0; i < 20; i++) {
      expect(a.c.isLeader && b.c.isLeader).toBe(false);
      await new Promise((r) => setTimeout(r, 25));
    }
    expect((await other.c.status()).leader).toBe(first.c.id);

    const { cluster } = await (await import("../src/internal.js")).openClusterBuckets(
      setupNc,
      namespace,
    );
    const lease = async () => {
      const e = await cluster.get(LEADER_KEY);
      return e?.operation === "PUT" ? e.json<{ id: string; expiresAt: number }>() : undefined;
    };

    // graceful: the leader deletes its lease, so the standby need not wait for it to expire
    let t0 = performance.now();
    await first.c.stop();
    expect(await lease()).toBeUndefined();
    await waitFor("the standby to take over", () => other.c.isLeader);
    console.log(
      `takeover after step-down: ${(performance.now() - t0).toFixed(0)} ms (lease ${leaseMs} ms)`,
    );

    // crash: the leader's connection dies, its lease runs out, a standby takes it — and not
    // before the dead leader's last lease has expired
    const c = await startCoordinator(namespace, "coord-c", leaseMs);
    expect(c.c.isLeader).toBe(false);
    t0 = performance.now();
    await other.nc.close();
    const last = await lease();
    expect(last?.id).toBe(other.c.id);
    await waitFor("the standby to take over a dead leader's lease", () => c.c.isLeader, 10_000);
    expect(Date.now()).toBeGreaterThanOrEqual(last!.expiresAt);
    console.log(
      `takeover after a leader crash: ${(performance.now() - t0).toFixed(0)} ms (lease ${leaseMs} ms)`,
    );
    expect(other.c.isLeader).toBe(false);
    const status = await c.c.status();
    expect(status.leader).toBe("coord-c");
    expect(status.epoch).toBeGreaterThan(0);
  });

  it("answers ctl.status from the leader only", async () => {
    const namespace = "ctl";
    const nc = await natsConnection();
    await ensureNamespace(nc, { namespace, shardCount: 4 });
    const a = await startCoordinator(namespace, "ctl-a", 600);
    // the lease comes first, the control subscription right after it
    const status = await waitFor("the leader to answer", () =>
      nc.request(`troupe.${namespace}.ctl.status`, "", { timeout: 500 }).then(
        (m) => m.json<ClusterStatus>(),
        () => undefined,
      ),
    );
    expect(status).toMatchObject({ namespace, shardCount: 4, leader: "ctl-a", workers: [] });
    expect(status.unassigned).toEqual([0, 1, 2, 3]);
    await a.c.stop();
    await expect(
      nc.request(`troupe.${namespace}.ctl.status`, "", { timeout: 500 }),
    ).rejects.toThrow();
  });
});

describe("assignment", () => {
  it("balances shards over joining workers, moving as few as possible", async () => {
    const namespace = "balance";
    const leaseMs = 1000;
    const nc = await natsConnection();
    await ensureNamespace(nc, { namespace, shardCount: 12 });
    const { c } = await startCoordinator(namespace, "coord", leaseMs);
    const w1 = await startWorker(namespace, "w1", leaseMs);
    let s = await settledStatus(c, ["w1"]);
    expect(shardsOf(s, "w1")).toHaveLength(12);
    await waitFor("w1 to pull 12 shards", () => w1.membership.ownedShards().length === 12);

    const w2 = await startWorker(namespace, "w2", leaseMs);
    s = await settledStatus(c, ["w1", "w2"]);
    const afterTwo = { w1: shardsOf(s, "w1")!, w2: shardsOf(s, "w2")! };
    expect(afterTwo.w1).toHaveLength(6);

    const w3 = await startWorker(namespace, "w3", leaseMs);
    s = await settledStatus(c, ["w1", "w2", "w3"]);
    expect(s.workers.map((w) => w.shards.length)).toEqual([4, 4, 4]);
    // stability: w1 and w2 only gave shards away, they got none from each other
    for (const id of ["w1", "w2"] as const) {
      expect(afterTwo[id]).toEqual(expect.arrayContaining(shardsOf(s, id)!));
    }
    await waitFor("the workers to pull what the assignment says", () =>
      [w1, w2, w3].every(
        (w) => JSON.stringify(w.membership.ownedShards()) === JSON.stringify(shardsOf(s, w.id)),
      ),
    );
    const workerStatus = (
      await nc.request(`troupe.${namespace}.ctl.worker.w3.status`, "", { timeout: 2000 })
    ).json<{ id: string; shards: number[] }>();
    expect(workerStatus.id).toBe("w3");
    expect(workerStatus.shards).toEqual(shardsOf(s, "w3"));
  });

  it("reassigns a dead worker's shards once its lease runs out", async () => {
    const namespace = "dead";
    const leaseMs = 600;
    const nc = await natsConnection();
    await ensureNamespace(nc, { namespace, shardCount: 6 });
    const { c } = await startCoordinator(namespace, "coord", leaseMs);
    await startWorker(namespace, "alive", leaseMs);
    // a "worker" that heartbeats once and dies: its entry goes stale
    const members = (await import("../src/internal.js")).openClusterBuckets;
    const { members: bucket } = await members(nc, namespace);
    await bucket.put(
      "ghost",
      JSON.stringify({
        id: "ghost",
        pid: 1,
        host: "x",
        startedAt: Date.now(),
        heartbeatAt: Date.now() + 1000,
        agentTypes: [],
        activeAgents: 0,
        draining: false,
      }),
    );
    const withGhost = await waitFor("the ghost to get shards", async () => {
      const s = await c.status();
      return (shardsOf(s, "ghost")?.length ?? 0) > 0 ? s : undefined;
    });
    expect(shardsOf(withGhost, "ghost")!.length).toBeGreaterThan(0);
    const t0 = performance.now();
    const s = await settledStatus(c, ["alive"]);
    console.log(`dead worker's shards reassigned after ${(performance.now() - t0).toFixed(0)} ms`);
    expect(shardsOf(s, "alive")).toHaveLength(6);
  });
});

describe("clock skew", () => {
  it("judges liveness by when the leader saw each heartbeat, not by the worker's own clock", async () => {
    const namespace = "skew";
    const leaseMs = 600;
    const nc = await natsConnection();
    await ensureNamespace(nc, { namespace, shardCount: 6 });
    const { c } = await startCoordinator(namespace, "coord", leaseMs);
    await startWorker(namespace, "alive", leaseMs);
    const { members: bucket } = await (await import("../src/internal.js")).openClusterBuckets(
      nc,
      namespace,
    );
    const HOUR = 3_600_000;
    // two "workers" beating with clocks an hour off: one behind, one ahead
    const beating = new Map<string, number>([
      ["behind", -HOUR],
      ["ahead", HOUR],
    ]);
    const beat = async () => {
      for (const [id, skew] of beating) {
        await bucket.put(
          id,
          JSON.stringify({
            id,
            pid: 1,
            host: "x",
            startedAt: Date.now() + skew,
            heartbeatAt: Date.now() + skew,
            agentTypes: [],
            activeAgents: 0,
            draining: false,
          }),
        );
      }
    };
    const timer = setInterval(() => void beat().catch(() => {}), 100);
    cleanups.push(async () => clearInterval(timer));
    await beat();
    // behind by an hour, yet alive: it gets its share (its stamps alone say dead for an hour)
    const shared = await waitFor("the skewed workers to get shards", async () => {
      const st = await c.status();
      return ["alive", "behind", "ahead"].every((id) => shardsOf(st, id)?.length === 2)
        ? st
        : undefined;
    });
    expect(shardsOf(shared, "behind")).toHaveLength(2);
    // ahead by an hour and then gone: its shards move once the lease runs out, not in an hour
    beating.delete("ahead");
    const after = await waitFor("the silent worker's shards to move", async () => {
      const st = await c.status();
      return (shardsOf(st, "ahead")?.length ?? 0) === 0 &&
        st.unassigned.length === 0 &&
        (shardsOf(st, "alive")?.length ?? 0) + (shardsOf(st, "behind")?.length ?? 0) === 6
        ? st
        : undefined;
    });
    expect(shardsOf(after, "behind")!.length).toBeGreaterThan(0);
  });
});

describe("graceful leave", () => {
  it("moves every shard of a leaving worker while messages keep flowing, counts exact", async () => {
    const namespace = "leave";
    const leaseMs = 1000;
    const nc = await natsConnection();
    await ensureNamespace(nc, { namespace, shardCount: 8 });
    const { c } = await startCoordinator(namespace, "coord", leaseMs);
    const w1 = await startWorker(namespace, "w1", leaseMs);
    const w2 = await startWorker(namespace, "w2", leaseMs);
    await settledStatus(c, ["w1", "w2"]);
    const client = await connect({ servers: server.url, namespace });
    cleanups.push(() => client.close());

    const agents = 60;
    const increments = 40;
    const refs = Array.from({ length: agents }, (_, i) => client.ref(counter, `c${i}`));
    let sent = 0;
    const t0 = performance.now();
    const sending = Promise.all(
      refs.map(async (ref) => {
        for (let n = 0; n < increments; n++) {
          await ref.send({ type: "inc", by: 1 });
          sent++;
        }
      }),
    );
    await waitFor("a third of the messages", () => sent >= (agents * increments) / 3);
    const sentAtLeave = sent;
    const leaveStart = performance.now();
    const w2Shards = w2.membership.ownedShards();
    expect(w2Shards.length).toBeGreaterThan(0);
    await w2.stop();
    const leaveMs = performance.now() - leaveStart;
    expect(w2.membership.ownedShards()).toEqual([]);
    await sending;
    const s = await settledStatus(c, ["w1"]);
    expect(shardsOf(s, "w1")).toHaveLength(8);
    expect(s.workers.map((w) => w.id)).toEqual(["w1"]);

    const values = await Promise.all(
      refs.map((ref) => ref.request<CounterValue>({ type: "get" }, { timeoutMs: 15_000 })),
    );
    const totalMs = performance.now() - t0;
    expect(values.map((v) => v.value)).toEqual(refs.map(() => increments));
    console.log(
      `graceful leave of a worker with ${w2Shards.length} shards at ${sentAtLeave}/${agents * increments} sent: ` +
        `${leaveMs.toFixed(0)} ms; ` +
        `${agents * increments} increments in ${totalMs.toFixed(0)} ms`,
    );
    expect(w1.runtime.stats().processed).toBeGreaterThan(0);
  });
});

describe("worker crash", () => {
  it("reassigns a crashed worker's shards; the new owner resumes with exact counts", async () => {
    const namespace = "crash";
    const leaseMs = 800;
    const nc = await natsConnection();
    await ensureNamespace(nc, { namespace, shardCount: 8 });
    const { c } = await startCoordinator(namespace, "coord", leaseMs);
    await startWorker(namespace, "w1", leaseMs);
    const w2nc = await natsConnection();
    const w2backend = await createNatsBackend({ nc: w2nc, namespace });
    // (its shutdown at the end cannot finish what the dead connection holds: do not wait)
    const w2runtime = await createRuntime({
      agents: [counter],
      backend: w2backend,
      shutdownTimeoutMs: 100,
    });
    await joinCluster({
      nc: w2nc,
      namespace,
      backend: w2backend,
      runtime: w2runtime,
      id: "w2",
      heartbeatMs: 200,
      leaseMs,
      agentTypes: [counter.type],
    });
    await settledStatus(c, ["w1", "w2"]);
    const client = await connect({ servers: server.url, namespace });
    cleanups.push(() => client.close());

    const refs = Array.from({ length: 40 }, (_, i) => client.ref(counter, `k${i}`));
    const firstHalf = () => Promise.all(refs.map((r) => r.send({ type: "inc", by: 1 })));
    for (let n = 0; n < 10; n++) await firstHalf();
    // w2 dies: no leave, no acks, no heartbeats (its connection is cut)
    const t0 = performance.now();
    await w2nc.close();
    for (let n = 0; n < 10; n++) await firstHalf();
    const s = await settledStatus(c, ["w1"]);
    const reassignMs = performance.now() - t0;
    expect(shardsOf(s, "w1")).toHaveLength(8);
    const values = await Promise.all(
      refs.map((ref) => ref.request<CounterValue>({ type: "get" }, { timeoutMs: 20_000 })),
    );
    expect(values.map((v) => v.value)).toEqual(refs.map(() => 20));
    console.log(
      `crashed worker's shards reassigned ${reassignMs.toFixed(0)} ms after the crash; ` +
        `all counts exact ${(performance.now() - t0).toFixed(0)} ms after it`,
    );
    await w2runtime.shutdown().catch(() => {});
  });
});
