/**
 * `troupe quarantine`, `troupe release` and `troupe quarantined` in-process against a real
 * nats-server, with the coordinator and one worker (the counter agent, serving the worker's
 * quarantine control subjects) running in this process.
 */

import type { NatsConnection } from "@nats-io/transport-node";
import {
  type Coordinator,
  createCoordinator,
  joinCluster,
  type Membership,
  type QuarantineControl,
  serveWorkerQuarantine,
} from "@troupe/coordinator";
import { counter } from "@troupe/example-counter";
import { connectNats, createNatsBackend, ensureNamespace, type NatsBackend } from "@troupe/nats";
import { createRuntime, type Runtime } from "@troupe/runtime";
import { type NatsServerHandle, natsServerMissing, startNatsServer } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { troupe } from "./helpers.js";

const NS = "qtest";
const SHARDS = 4;

const natsMissing = natsServerMissing();

describe.skipIf(natsMissing !== undefined)(
  `quarantine, release, quarantined ${natsMissing ?? ""}`,
  () => {
    let server: NatsServerHandle;
    let nc: NatsConnection;
    let coordinator: Coordinator;
    let backend: NatsBackend;
    let runtime: Runtime;
    let membership: Membership;
    let control: QuarantineControl;
    let env: Record<string, string>;

    beforeAll(async () => {
      server = await startNatsServer();
      env = { TROUPE_NATS_URL: server.url, TROUPE_NAMESPACE: NS };
      nc = await connectNats(server.url);
      const info = await ensureNamespace(nc, { namespace: NS, shardCount: SHARDS });
      coordinator = createCoordinator({ nc, namespace: NS, id: "coord-q" });
      await coordinator.start();
      backend = await createNatsBackend({ nc, namespaceInfo: info });
      runtime = await createRuntime({ agents: [counter], backend });
      membership = await joinCluster({
        nc,
        namespace: NS,
        backend,
        runtime,
        id: "worker-q",
        agentTypes: [counter.type],
      });
      control = serveWorkerQuarantine({
        nc,
        namespace: NS,
        workerId: membership.id,
        runtime,
        shardCount: SHARDS,
        ownedShards: () => membership.ownedShards(),
        logger: { debug() {}, info() {}, warn() {}, error() {} },
      });
      const deadline = Date.now() + 20_000;
      while (membership.ownedShards().length < SHARDS && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(membership.ownedShards()).toHaveLength(SHARDS);
    }, 30_000);

    afterAll(async () => {
      control?.stop();
      await membership?.leave().catch(() => {});
      await runtime?.shutdown().catch(() => {});
      await coordinator?.stop().catch(() => {});
      await nc?.close().catch(() => {});
      await server?.cleanup();
    }, 30_000);

    it("quarantine holds messages, quarantined lists them, release delivers them", async () => {
      const ref = runtime.ref(counter, "q1");
      await ref.send({ type: "inc", by: 1 });
      await runtime.settled();

      const q = await troupe(["quarantine", "counter/q1", "--reason", "bad input upstream"], env);
      expect(q.code, q.stderr).toBe(0);
      expect(q.stdout).toBe("quarantined counter/q1 on worker-q: bad input upstream\n");

      for (let i = 0; i < 3; i++) await ref.send({ type: "inc", by: 10 });
      await runtime.settled();
      expect(await backend.parked.heldCount("counter/q1")).toBe(3);

      const list = await troupe(["quarantined"], env);
      expect(list.code, list.stderr).toBe(0);
      expect(list.stdout).toContain(`1 quarantined agent in namespace ${NS}`);
      expect(list.stdout).toMatch(
        /│ counter\/q1 │ bad input upstream │ manual │ \d{4}-\d\d-\d\dT[^│]+ago\) │ 3\s+│/,
      );

      const json = await troupe(["quarantined", "--json"], env);
      expect(json.code, json.stderr).toBe(0);
      const reply = JSON.parse(json.stdout) as { agents: unknown[] };
      expect(reply.agents).toEqual([
        expect.objectContaining({
          address: "counter/q1",
          reason: "bad input upstream",
          by: "manual",
          since: expect.any(Number),
          held: 3,
        }),
      ]);

      const rel = await troupe(["release", "counter/q1"], env);
      expect(rel.code, rel.stderr).toBe(0);
      expect(rel.stdout).toBe(
        "released counter/q1 on worker-q: 3 held messages delivered first, in order\n",
      );
      expect(await ref.request({ type: "get" }, { timeoutMs: 10_000 })).toMatchObject({
        value: 31,
      });
      const empty = await troupe(["quarantined"], env);
      expect(empty.stdout).toBe(`no agents are quarantined in namespace ${NS}\n`);
    });

    it("errors: not quarantined, unknown type → exit 1 with the code; bad command lines → exit 2", async () => {
      const notQ = await troupe(["release", "counter/never"], env);
      expect(notQ.code).toBe(1);
      expect(notQ.stderr).toBe("troupe: INVALID_STATE: counter/never is not quarantined\n");

      const unknown = await troupe(["quarantine", "nobody/x", "--reason", "r"], env);
      expect(unknown.code).toBe(1);
      expect(unknown.stderr).toMatch(
        /^troupe: UNKNOWN_AGENT: no worker in namespace qtest hosts agent type "nobody"/,
      );

      const noReason = await troupe(["quarantine", "counter/q2"], env);
      expect(noReason.code).toBe(2);
      expect(noReason.stderr).toMatch(/--reason/);

      const blank = await troupe(["quarantine", "counter/q2", "--reason", "  "], env);
      expect(blank.code).toBe(2);

      const badAddress = await troupe(["release", "no-slash"], env);
      expect(badAddress.code).toBe(2);

      const nobody = await troupe(["quarantined", "--namespace", "nobody-home"], env);
      expect(nobody.code).toBe(1);
      expect(nobody.stderr).toBe(
        `troupe: no coordinator is running in namespace nobody-home at ${server.url}\n`,
      );
      expect(await runtime.quarantined()).toEqual([]);
    });
  },
);
