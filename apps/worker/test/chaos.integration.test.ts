/**
 * The chaos suite: a 3-node JetStream cluster (R3), two coordinators and three workers as
 * real processes under steady ordered load, while a random worker is SIGKILLed (and
 * restarted) every 10–20 s, the coordinator leader is SIGKILLed once and one NATS node is
 * killed once. At the end: nothing acknowledged is lost or counted twice, per-sender order
 * holds, no snapshot write lost its compare-and-set (no double activation), and recovery
 * times per fault kind are printed.
 *
 * Inside `npm test` it runs short (TROUPE_CHAOS_DURATION_S, default 45 s); `npm run chaos`
 * (scripts/chaos.mjs) runs it long with more agents.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { ClusterStatus } from "@troupe/coordinator";
import type { NatsClusterHandle } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ActivationWatch,
  agentsOnShards,
  ORDERED_COUNTER,
  OrderedLoad,
  percentile,
  probeRecovery,
  verifyCounts,
  workerStatus,
} from "./chaos.js";
import {
  buildApps,
  clusterStatus,
  connectedCluster,
  logTail,
  type Proc,
  printLogsIfAsked,
  procs,
  spawnCoordinator,
  spawnWorker,
  type Target,
  teardown,
  waitFor,
  waitForBalanced,
} from "./procs.js";

const env = (name: string, fallback: number) => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : fallback;
};
const DURATION_MS = env("TROUPE_CHAOS_DURATION_S", 45) * 1000;
const AGENTS = env("TROUPE_CHAOS_AGENTS", 200);
const RATE = env("TROUPE_CHAOS_RATE", 150);
const SENDERS = 4;
const SHARDS = 16;
const LEASE_MS = 2000;
const NAMESPACE = "chaos";
const WORKER_IDS = ["w1", "w2", "w3"];

let cluster: NatsClusterHandle;
let nc: NatsConnection;
let load: OrderedLoad | undefined;

const status = (): Promise<ClusterStatus | undefined> => clusterStatus(nc, NAMESPACE);
const target = (): Target => ({ servers: cluster.urls, namespace: NAMESPACE });
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

type FaultKind = "worker SIGKILL" | "leader SIGKILL" | "NATS node kill";
interface Fault {
  kind: FaultKind;
  at: number;
  what: string;
  recovery: Promise<{ ms: number[]; unrecovered: number }>;
}

beforeAll(async () => {
  await buildApps();
  ({ cluster, nc } = await connectedCluster(3));
}, 300_000);

afterAll(async () => {
  printLogsIfAsked();
  await load?.close();
  await teardown(cluster, nc);
}, 60_000);

describe("chaos", () => {
  it(
    `keeps every invariant through worker, leader and NATS node kills (${DURATION_MS / 1000} s, ${AGENTS} agents)`,
    async () => {
      const coordinators = new Map<string, Proc>();
      const workers = new Map<string, { proc: Proc; incarnation: number }>();
      const startCoordinator = (id: string) =>
        coordinators.set(
          id,
          spawnCoordinator(target(), { shards: SHARDS, replicas: 3, leaseMs: LEASE_MS, id }),
        );
      const startWorker = (id: string) => {
        const incarnation = (workers.get(id)?.incarnation ?? -1) + 1;
        const proc = spawnWorker(target(), {
          id,
          name: `${id}#${incarnation}`,
          agents: [ORDERED_COUNTER],
          leaseMs: LEASE_MS,
        });
        workers.set(id, { proc, incarnation });
      };
      const faults: Fault[] = [];
      try {
        startCoordinator("c1");
        await waitFor("a leader", async () => (await status())?.leader === "c1", 90_000);
        startCoordinator("c2");
        for (const id of WORKER_IDS) startWorker(id);
        await waitForBalanced("three balanced workers", nc, NAMESPACE, WORKER_IDS, 60_000);

        load = new OrderedLoad({
          urls: cluster.urls,
          namespace: NAMESPACE,
          agents: AGENTS,
          senders: SENDERS,
          ratePerSec: RATE,
        });
        await load.start();
        const prober = load.clients[SENDERS - 1]!;
        const watch = new ActivationWatch(nc, NAMESPACE);
        const incarnations = () =>
          [...workers].map(([id, w]) => ({ id, incarnation: w.incarnation }));
        let watching = true;
        const watcher = (async () => {
          while (watching) {
            await watch.poll(incarnations());
            await sleep(2000);
          }
        })();

        const started = Date.now();
        const end = started + DURATION_MS;
        const leaderAt = started + DURATION_MS * 0.35;
        const natsAt = started + DURATION_MS * 0.6;
        let leaderDone = false;
        let natsDone = false;
        let nextWorkerKill = started + 10_000 + Math.random() * 10_000;
        const restarts: Promise<unknown>[] = [];
        while (Date.now() < end) {
          await sleep(250);
          const now = Date.now();
          if (!leaderDone && now >= leaderAt) {
            leaderDone = true;
            const s = await status();
            const leader = s?.leader;
            const proc =
              leader === null || leader === undefined ? undefined : coordinators.get(leader);
            if (proc !== undefined && leader !== null && leader !== undefined) {
              const at = Date.now();
              proc.child.kill("SIGKILL");
              // the standby leads once the lease ran out; the agents keep being processed
              const sample = Array.from({ length: 20 }, (_, i) => (i * 7) % AGENTS);
              faults.push({
                kind: "leader SIGKILL",
                at,
                what: leader,
                recovery: (async () => {
                  const took = await waitFor(
                    "a new leader",
                    async () => {
                      const t = await status();
                      return t?.leader !== undefined && t.leader !== null && t.leader !== leader
                        ? Date.now() - at
                        : undefined;
                    },
                    60_000,
                  ).catch(() => undefined);
                  const probes = await probeRecovery(prober, sample, at);
                  return took === undefined
                    ? { ms: probes.ms, unrecovered: 1 + probes.unrecovered }
                    : { ms: [took], unrecovered: probes.unrecovered };
                })(),
              });
              restarts.push(
                proc.exited.then(async () => {
                  await sleep(3000);
                  startCoordinator(leader);
                }),
              );
            }
          }
          if (!natsDone && now >= natsAt) {
            natsDone = true;
            const node = Math.floor(Math.random() * 3);
            const at = Date.now();
            await cluster.killNode(node, "SIGKILL");
            const sample = Array.from({ length: 30 }, (_, i) => (i * 13) % AGENTS);
            faults.push({
              kind: "NATS node kill",
              at,
              what: `node ${node}`,
              recovery: probeRecovery(prober, sample, at, 90_000),
            });
            restarts.push(sleep(5000).then(() => cluster.restartNode(node)));
          }
          if (now >= nextWorkerKill && end - now > 8000) {
            nextWorkerKill = now + 10_000 + Math.random() * 10_000;
            const s = await status();
            const live = WORKER_IDS.filter((id) => {
              const w = workers.get(id)!;
              return w.proc.child.exitCode === null && w.proc.child.signalCode === null;
            });
            const id = live[Math.floor(Math.random() * live.length)];
            if (id === undefined) continue;
            // the worker's own word on what it pulls (the leader may be changing just now)
            const own = await workerStatus(nc, NAMESPACE, id, 2000);
            const shards = own?.shards ?? s?.workers.find((w) => w.id === id)?.shards ?? [];
            const affected = agentsOnShards(AGENTS, SHARDS, shards);
            const w = workers.get(id)!;
            await watch.poll([{ id, incarnation: w.incarnation }]);
            const at = Date.now();
            w.proc.child.kill("SIGKILL");
            faults.push({
              kind: "worker SIGKILL",
              at,
              what: `${id} (${shards.length} shards, ${affected.length} agents)`,
              recovery: probeRecovery(prober, affected, at, 90_000),
            });
            restarts.push(
              w.proc.exited.then(async () => {
                await sleep(2000);
                startWorker(id);
              }),
            );
          }
        }
        await Promise.all(restarts);
        const recoveries = await Promise.all(faults.map((f) => f.recovery));
        await load.stop();
        const verdict = await verifyCounts(load, AGENTS, 120_000);
        watching = false;
        await watcher;
        await watch.poll(incarnations());
        const activations = watch.totals();

        // --- the table -------------------------------------------------------------------------
        const rows: Array<[string, string]> = [
          [
            "run",
            `${DURATION_MS / 1000} s, ${AGENTS} agents, ${SENDERS} senders, ${RATE}/s, ${SHARDS} shards, lease ${LEASE_MS} ms`,
          ],
          ["increments acknowledged to senders", String(verdict.acknowledged)],
          ["sum of counters", String(verdict.counted)],
          ["lost", String(verdict.lost)],
          ["duplicated", String(verdict.duplicated)],
          ["per-sender order violations", String(verdict.orderViolations)],
          ["agents unreadable at the end", String(verdict.unreadable)],
          ["double activations (snapshot CAS conflicts)", String(activations.conflicts)],
          [
            "fencings / fenced deliveries, acks, writes",
            `${activations.fences} / ${activations.fenced}`,
          ],
          ["sends retried (same message id)", String(load.retries)],
        ];
        const kinds: FaultKind[] = ["worker SIGKILL", "leader SIGKILL", "NATS node kill"];
        for (const kind of kinds) {
          const idx = faults.map((f, i) => (f.kind === kind ? i : -1)).filter((i) => i >= 0);
          const ms = idx.flatMap((i) => recoveries[i]!.ms);
          const unrecovered = idx.reduce((n, i) => n + recoveries[i]!.unrecovered, 0);
          rows.push([
            `${kind}: faults / recovery p50 / p99 / max (ms)`,
            idx.length === 0
              ? "0"
              : `${idx.length} / ${percentile(ms, 50)} / ${percentile(ms, 99)} / ${Math.max(...ms)}` +
                (unrecovered > 0 ? ` (${unrecovered} not recovered)` : ""),
          ]);
        }
        const table = ["| | |", "|---|---|", ...rows.map(([k, v]) => `| ${k} | ${v} |`)].join("\n");
        const faultLog = faults
          .map(
            (f, i) =>
              `- +${((f.at - started) / 1000).toFixed(1)} s ${f.kind} ${f.what}: p99 ${percentile(recoveries[i]!.ms, 99)} ms`,
          )
          .join("\n");
        console.log(`\nchaos result\n\n${table}\n\nfaults:\n${faultLog}\n`);

        expect(faults.some((f) => f.kind === "worker SIGKILL")).toBe(true);
        expect(faults.some((f) => f.kind === "leader SIGKILL")).toBe(true);
        expect(faults.some((f) => f.kind === "NATS node kill")).toBe(true);
        expect(verdict.unreadable).toBe(0);
        expect(verdict.lost).toBe(0);
        expect(verdict.duplicated).toBe(0);
        expect(verdict.orderViolations).toBe(0);
        expect(verdict.counted).toBe(verdict.acknowledged);
        expect(activations.conflicts).toBe(0);
        expect(recoveries.every((r) => r.unrecovered === 0)).toBe(true);
      } catch (e) {
        for (const p of procs) console.log(logTail(p));
        throw e;
      }
    },
    DURATION_MS + 420_000,
  );
});
