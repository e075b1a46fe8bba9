/**
 * Quarantine as a cluster operation, with real processes: a built coordinator and worker,
 * the built `troupe` CLI. An agent quarantined through the CLI has its messages held in the
 * held stream; the worker and the coordinator are SIGKILLed and started again; the agent is
 * still quarantined with its held messages, and `troupe release` delivers them in order
 * before new ones.
 */
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { connect, type TroupeClient } from "@troupe/nats";
import { type NatsServerHandle, natsServerMissing } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildApps,
  connectedServer,
  logTail,
  procs,
  repo,
  runCli,
  spawnCoordinator,
  spawnWorker,
  stopProc,
  type Target,
  teardown,
  waitFor,
  waitForAllShards,
} from "./procs.js";

const FIXTURE = join(repo, "apps/worker/test/fixtures/quarantine-log.mjs");
const NAMESPACE = "quar";
const SHARDS = 4;
const WORKER = "worker-q";

const natsMissing = natsServerMissing();

let server: NatsServerHandle;
let nc: NatsConnection;
let client: TroupeClient;

/** Runs the built `troupe` CLI against this cluster. */
const troupe = (...args: string[]) => runCli(server.url, NAMESPACE, ...args);

const target = (): Target => ({ servers: server.url, namespace: NAMESPACE });
const startWorker = () => spawnWorker(target(), { id: WORKER, agents: [FIXTURE] });
const startCoordinator = () => spawnCoordinator(target(), { shards: SHARDS });

const ownsAll = () => waitForAllShards(nc, NAMESPACE, WORKER, SHARDS, 60_000);

interface Listed {
  agents: { address: string; reason: string; by: string; held: number }[];
}

describe.skipIf(natsMissing !== undefined)(
  `quarantine across a worker restart ${natsMissing ?? ""}`,
  () => {
    beforeAll(async () => {
      await buildApps();
      ({ server, nc } = await connectedServer());
      startCoordinator();
      startWorker();
      try {
        await ownsAll();
      } catch (e) {
        for (const p of procs) console.error(logTail(p));
        throw e;
      }
      client = await connect({
        servers: server.url,
        namespace: NAMESPACE,
        requestTimeoutMs: 15_000,
      });
    }, 300_000);

    afterAll(async () => {
      await client?.close().catch(() => {});
      await teardown(server, nc);
    }, 60_000);

    it("stays quarantined with its held messages after worker and coordinator SIGKILLs; release delivers them in order first", async () => {
      const ref = client.ref("qlog", "a");
      await ref.send({ type: "item", n: 0 });
      expect(await ref.request({ type: "get" })).toEqual({ seen: [0] });

      const q = await troupe("quarantine", "qlog/a", "--reason", "operator test");
      expect(q.code, q.stderr).toBe(0);
      expect(q.stdout).toContain(`quarantined qlog/a on ${WORKER}: operator test`);
      for (let n = 1; n <= 50; n++) await ref.send({ type: "item", n });
      await waitFor("50 held messages", async () => {
        const l = await troupe("quarantined", "--json");
        const agents = (JSON.parse(l.stdout || "{}") as Listed).agents ?? [];
        return agents[0]?.held === 50;
      });

      // worker and coordinator killed: nothing graceful; the restarted worker finds the
      // quarantine in KV, the restarted coordinator lists it
      const alive = (name: string) =>
        procs.find(
          (p) => p.name === name && p.child.exitCode === null && p.child.signalCode === null,
        )!;
      expect(await stopProc(alive(WORKER), "SIGKILL")).toBe("SIGKILL");
      expect(await stopProc(alive("coordinator"), "SIGKILL")).toBe("SIGKILL");
      for (let n = 51; n <= 60; n++) await ref.send({ type: "item", n }); // while it is down
      startCoordinator();
      startWorker();
      await ownsAll();
      await waitFor("60 held messages after the restart", async () => {
        const l = await troupe("quarantined", "--json");
        const agents = (JSON.parse(l.stdout || "{}") as Listed).agents ?? [];
        return agents[0]?.held === 60;
      });
      const listed = await troupe("quarantined");
      expect(listed.code, listed.stderr).toBe(0);
      expect(listed.stdout).toMatch(/│ qlog\/a\s+│ operator test │ manual │ [^│]+│ 60\s+│/);

      const rel = await troupe("release", "qlog/a");
      expect(rel.code, rel.stderr).toBe(0);
      expect(rel.stdout).toContain("60 held messages delivered first, in order");
      for (let n = 61; n <= 65; n++) await ref.send({ type: "item", n });
      const seen = await waitFor("every item", async () => {
        const r = (await ref.request({ type: "get" })) as { seen: number[] };
        return r.seen.length >= 66 ? r.seen : undefined;
      });
      expect(seen).toEqual(Array.from({ length: 66 }, (_, n) => n));
      const after = await troupe("quarantined", "--json");
      expect((JSON.parse(after.stdout) as Listed).agents).toEqual([]);
    }, 180_000);
  },
);
