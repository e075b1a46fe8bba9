/**
 * The cluster as real processes: a 3-node JetStream cluster, two coordinators (leader and
 * standby) and two workers run from their built `dist/main.js`, clients in this process.
 * Checks exact counts, per-sender order and no duplicates while a worker restarts under
 * load and the leader coordinator exits.
 */
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import type { ClusterStatus } from "@troupe/coordinator";
import { connect, type TroupeClient } from "@troupe/nats";
import type { NatsClusterHandle } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  balancedOver,
  buildApps,
  COORDINATOR_MAIN,
  clusterStatus,
  connectedCluster,
  logTail,
  natsArgs,
  printLogsIfAsked,
  procs,
  repo,
  spawnCoordinator,
  spawnNode,
  spawnWorker,
  stopProc,
  type Target,
  teardown,
  WORKER_MAIN,
  waitFor,
  waitForBalanced,
} from "./procs.js";

const FIXTURE = join(repo, "apps/worker/test/fixtures/ordered-counter.mjs");

const NAMESPACE = "proc";
const SHARDS = 16;
const LEASE_MS = 2000;
const AGENTS = 200;
const INCREMENTS = 50;
const SENDERS = 4;

let cluster: NatsClusterHandle;
let nc: NatsConnection;
const clients: TroupeClient[] = [];

const status = (timeoutMs = 1000): Promise<ClusterStatus | undefined> =>
  clusterStatus(nc, NAMESPACE, timeoutMs);

const target = (): Target => ({ servers: cluster.urls, namespace: NAMESPACE });
const startCoordinator = (id: string) =>
  spawnCoordinator(target(), { shards: SHARDS, replicas: 3, leaseMs: LEASE_MS, id });
const startWorker = (id: string) => spawnWorker(target(), { id, agents: [FIXTURE] });

interface OrderedValue {
  count: number;
  last: Record<string, number>;
  violations: number;
  duplicates: number;
}

beforeAll(async () => {
  await buildApps();
  const t0 = performance.now();
  ({ cluster, nc } = await connectedCluster(3));
  console.log(`3-node JetStream cluster: ${(performance.now() - t0).toFixed(0)} ms`);
}, 300_000);

afterAll(async () => {
  printLogsIfAsked();
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
  await teardown(cluster, nc);
}, 60_000);

describe("troupe-coordinator and troupe-worker processes", () => {
  it("keeps counts exact and order per sender through a worker restart and a leader change", async () => {
    try {
      // --- start: leader, standby, two workers ----------------------------------------------
      let t0 = performance.now();
      const coordA = startCoordinator("coord-a");
      await waitFor("coord-a to lead", async () => (await status())?.leader === "coord-a", 90_000);
      console.log(`namespace + leader: ${(performance.now() - t0).toFixed(0)} ms`);
      const coordB = startCoordinator("coord-b");
      t0 = performance.now();
      const w1 = startWorker("w1");
      let w2 = startWorker("w2");
      const twoWorkers = await waitForBalanced(
        "both workers to own shards",
        nc,
        NAMESPACE,
        ["w1", "w2"],
        60_000,
      );
      console.log(
        `workers up and balanced: ${(performance.now() - t0).toFixed(0)} ms: ` +
          twoWorkers.workers.map((w) => `${w.id}=${w.shards.length}`).join(" "),
      );

      // --- load: 4 senders, each its own client connection ------------------------------------
      for (let s = 0; s < SENDERS; s++) {
        clients.push(await connect({ servers: cluster.urls, namespace: NAMESPACE }));
      }
      const seqs = new Map<string, number>();
      let sent = 0;
      let resent = 0;
      /**
       * Sends increments k in [from, to) of every agent: sender s sends k ≡ s (mod SENDERS),
       * each agent's in order (awaited one by one), all agents at once; `perSecond` paces it.
       */
      const sendPhase = (
        from: number,
        to: number,
        perSecond?: number,
        beforeLast: Promise<unknown> = Promise.resolve(),
      ) => {
        const gapMs = perSecond === undefined ? 0 : (1000 * SENDERS) / perSecond;
        return Promise.all(
          clients.map(async (client, s) => {
            const sender = `s${s}`;
            let next = performance.now();
            const pace = async () => {
              if (gapMs === 0) return;
              const at = Math.max(performance.now(), next);
              next = at + gapMs;
              await new Promise((r) => setTimeout(r, at - performance.now()));
            };
            await Promise.all(
              Array.from({ length: AGENTS }, async (_, a) => {
                const ref = client.ref("ordered-counter", `a${a}`);
                const key = `${sender}/${a}`;
                for (
                  let k = from + ((((s - from) % SENDERS) + SENDERS) % SENDERS);
                  k < to;
                  k += SENDERS
                ) {
                  await pace();
                  // the last increments wait for `beforeLast`: the phase is still sending
                  // whatever the disruptions take on a slow machine
                  if (k + SENDERS >= to) await beforeLast;
                  const seq = (seqs.get(key) ?? 0) + 1;
                  seqs.set(key, seq);
                  // the id makes a retried send idempotent (the inbox dedups on it)
                  const messageId = `${sender}-a${a}-${seq}`;
                  for (let attempt = 1; ; attempt++) {
                    try {
                      await ref.send({ type: "inc", sender, seq }, { messageId });
                      break;
                    } catch (e) {
                      if (attempt >= 20) throw e;
                      resent++;
                      await new Promise((r) => setTimeout(r, 250));
                    }
                  }
                  sent++;
                }
              }),
            );
          }),
        );
      };
      const readAll = () =>
        Promise.all(
          Array.from({ length: AGENTS }, (_, a) =>
            clients[0]!
              .ref("ordered-counter", `a${a}`)
              .request<OrderedValue>({ type: "get" }, { timeoutMs: 10_000 })
              .catch(() => undefined),
          ),
        );
      const untilCounted = (n: number, timeoutMs: number) =>
        waitFor(
          `every agent to count ${n} increments`,
          async () => {
            const all = await readAll();
            return all.every((v) => v !== undefined && v.count >= n)
              ? (all as OrderedValue[])
              : undefined;
          },
          timeoutMs,
        );

      // --- phase 1, paced: a worker restarts and the leader exits meanwhile -------------------
      const PHASE1 = 30;
      const phase1Total = AGENTS * PHASE1;
      const phase1Start = performance.now();
      let disruptionsDone!: () => void;
      const disrupted = new Promise<void>((r) => {
        disruptionsDone = r;
      });
      const phase1 = sendPhase(0, PHASE1, 1000, disrupted).then(() => performance.now());
      await waitFor("a tenth of phase 1", () => sent >= phase1Total / 10, 60_000);

      t0 = performance.now();
      const sentAtStop = sent;
      const w2Exit = await stopProc(w2);
      const drainMs = performance.now() - t0;
      expect(w2Exit, logTail(w2)).toBe(0);
      const afterDrain = await waitForBalanced("w1 to own every shard", nc, NAMESPACE, ["w1"]);
      console.log(
        `w2 drained and exited in ${drainMs.toFixed(0)} ms (SIGTERM at ${sentAtStop}/${phase1Total} sent); ` +
          `w1 owns ${afterDrain.workers.find((w) => w.id === "w1")?.shards.length} shards`,
      );
      t0 = performance.now();
      w2 = startWorker("w2");
      await waitForBalanced("w2 to own shards again", nc, NAMESPACE, ["w1", "w2"], 60_000);
      console.log(
        `w2 restarted and rebalanced in ${(performance.now() - t0).toFixed(0)} ms (at ${sent}/${phase1Total} sent)`,
      );

      t0 = performance.now();
      const sentAtTakeover = sent;
      const aExit = stopProc(coordA);
      await waitFor(
        "coord-b to lead",
        async () => (await status(500))?.leader === "coord-b",
        LEASE_MS * 3,
      );
      const takeoverMs = performance.now() - t0;
      expect(await aExit, logTail(coordA)).toBe(0);
      console.log(
        `standby took over ${takeoverMs.toFixed(0)} ms after SIGTERM to the leader (at ${sentAtTakeover}/${phase1Total} sent)`,
      );
      // the disruptions happened under load: phase 1 holds its last increments until now
      disruptionsDone();

      const phase1Sent = await phase1;
      await untilCounted(PHASE1, 60_000);
      const phase1Done = performance.now();
      console.log(
        `phase 1: ${phase1Total} paced increments sent in ${(phase1Sent - phase1Start).toFixed(0)} ms, ` +
          `all processed ${(phase1Done - phase1Sent).toFixed(0)} ms after the last send`,
      );

      // --- phase 2, unpaced: throughput ------------------------------------------------------
      const phase2Total = AGENTS * (INCREMENTS - PHASE1);
      const phase2Start = performance.now();
      const phase2Sent = await sendPhase(PHASE1, INCREMENTS).then(() => performance.now());
      const values = await untilCounted(INCREMENTS, 90_000);
      const phase2Ms = performance.now() - phase2Start;
      console.log(
        `phase 2: ${phase2Total} increments from ${SENDERS} senders: sent in ${(phase2Sent - phase2Start).toFixed(0)} ms ` +
          `(${((phase2Total / (phase2Sent - phase2Start)) * 1000).toFixed(0)}/s appended), all processed in ` +
          `${phase2Ms.toFixed(0)} ms (${((phase2Total / phase2Ms) * 1000).toFixed(0)}/s end to end, ` +
          `R3 inbox, 2 workers, 2 cores shared by everything); ${resent} sends retried`,
      );

      // --- everything delivered exactly once, in order ----------------------------------------
      expect(values.map((v) => v.count)).toEqual(values.map(() => INCREMENTS));
      expect(values.reduce((n, v) => n + v.duplicates, 0)).toBe(0);
      expect(values.reduce((n, v) => n + v.violations, 0)).toBe(0);
      for (const v of values) {
        for (let s = 0; s < SENDERS; s++) {
          expect(v.last[`s${s}`]).toBe(Math.ceil((INCREMENTS - s) / SENDERS));
        }
      }

      // --- spread: both workers host agents ----------------------------------------------------
      const spread = await waitFor("both workers to report active agents", async () => {
        const s = await status();
        const busy = s?.workers.filter((w) => w.shards.length > 0 && w.activeAgents > 0);
        return busy?.length === 2 && s?.unassigned.length === 0 ? s : undefined;
      });
      expect(spread.leader).toBe("coord-b");
      expect(balancedOver(spread, ["w1", "w2"])).toBe(true);
      const perWorker = await Promise.all(
        ["w1", "w2"].map(async (id) =>
          (
            await nc.request(`troupe.${NAMESPACE}.ctl.worker.${id}.status`, "", { timeout: 2000 })
          ).json<{
            id: string;
            shards: number[];
            activeAgents: number;
            stats: { processed: number };
          }>(),
        ),
      );
      for (const w of perWorker) {
        expect(w.shards).toEqual(spread.workers.find((x) => x.id === w.id)?.shards);
      }
      console.log(
        `spread: ${perWorker.map((w) => `${w.id}: ${w.shards.length} shards, ${w.activeAgents} active, ${w.stats.processed} processed`).join("; ")}`,
      );

      // --- clean exits ----------------------------------------------------------------------
      // workers first (the leader takes their shards back), then the coordinator
      t0 = performance.now();
      const exits = await Promise.all([w1, w2].map((p) => stopProc(p)));
      exits.push(await stopProc(coordB));
      expect(exits, [w1, w2, coordB].map((p) => logTail(p)).join("\n")).toEqual([0, 0, 0]);
      console.log(`cluster stopped in ${(performance.now() - t0).toFixed(0)} ms`);
    } catch (e) {
      for (const p of procs) console.log(logTail(p));
      throw e;
    }
  }, 240_000);

  it("exits 2 on configuration errors", async () => {
    const noAgents = spawnNode("no-agents", WORKER_MAIN, [
      ...natsArgs(target()),
      "--agents",
      join(repo, "apps/worker/test/fixtures/no-agents.mjs"),
    ]);
    const wrongShards = spawnNode("wrong-shards", COORDINATOR_MAIN, [
      ...natsArgs(target()),
      "--shards",
      String(SHARDS * 2),
    ]);
    expect(await noAgents.exited, logTail(noAgents)).toBe(2);
    expect(noAgents.logs.join("\n")).toMatch(/exports no agent definitions/);
    expect(await wrongShards.exited, logTail(wrongShards)).toBe(2);
    expect(wrongShards.logs.join("\n")).toMatch(/has 16 shards/);
    // TROUPE_AGENTS names several modules, comma-separated: the second one is loaded too
    const missing = join(repo, "apps/worker/test/fixtures/does-not-exist.mjs");
    const fromEnv = spawnNode("agents-env", WORKER_MAIN, natsArgs(target()), {
      env: { TROUPE_AGENTS: `${FIXTURE},${missing}` },
    });
    expect(await fromEnv.exited, logTail(fromEnv)).toBe(2);
    expect(fromEnv.logs.join("\n")).toContain(`cannot load agent module ${missing}`);
    // a value an option refuses is a configuration error too; --help is not an error
    const badLease = spawnNode("bad-lease", WORKER_MAIN, [
      ...natsArgs(target()),
      "--lease-ms",
      "5",
    ]);
    expect(await badLease.exited, logTail(badLease)).toBe(2);
    expect(badLease.logs.join("\n")).toMatch(/--lease-ms.*must be an integer >= /);
    const help = spawnNode("help", COORDINATOR_MAIN, ["--help"]);
    expect(await help.exited, logTail(help)).toBe(0);
  }, 30_000);
});
