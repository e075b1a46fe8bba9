import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type NatsConnection, connect as natsConnect } from "@nats-io/transport-node";
import { createCoordinator } from "@troupe/coordinator";
import { connect, ensureNamespace } from "@troupe/nats";
import { type NatsServerHandle, startNatsServer } from "@troupe/testkit";
import { isTroupeError } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadAgents, type ParentLogger, startWorker } from "../src/worker.js";

const here = dirname(fileURLToPath(import.meta.url));
const FIXTURE = join(here, "fixtures/ordered-counter.mjs");

const quiet: ParentLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child: () => quiet,
};

let server: NatsServerHandle;
let nc: NatsConnection;

beforeAll(async () => {
  server = await startNatsServer();
  nc = await natsConnect({ servers: server.url });
});

afterAll(async () => {
  await nc?.close();
  await server?.cleanup();
});

describe("loadAgents", () => {
  it("collects every exported agent definition", async () => {
    const agents = await loadAgents([FIXTURE]);
    expect(agents.map((a) => a.type)).toEqual(["ordered-counter"]);
  });

  it("refuses a module without agents, or one that does not load (CONFIG_ERROR)", async () => {
    for (const path of [
      join(here, "worker.integration.test.ts.nope"),
      fileURLToPath(import.meta.url),
    ]) {
      const err = await loadAgents([path]).catch((e: unknown) => e);
      expect(isTroupeError(err) && err.code, path).toBe("CONFIG_ERROR");
    }
    const none = await loadAgents([]).catch((e: unknown) => e);
    expect(isTroupeError(none) && none.code).toBe("CONFIG_ERROR");
  });
});

describe("startWorker", () => {
  it("joins, hosts its shards' agents, and hands them back on stop", async () => {
    const namespace = "inproc";
    await ensureNamespace(nc, { namespace, shardCount: 4 });
    const coordinator = createCoordinator({ nc, namespace, leaseMs: 1000, id: "c" });
    await coordinator.start();
    const worker = await startWorker({
      servers: [server.url],
      namespace,
      agents: await loadAgents([FIXTURE]),
      id: "solo",
      logger: quiet,
    });
    const client = await connect({ servers: server.url, namespace });
    try {
      const ref = client.ref("ordered-counter", "x");
      for (let seq = 1; seq <= 5; seq++) await ref.send({ type: "inc", sender: "t", seq });
      const value = await ref.request<{ count: number; violations: number }>(
        { type: "get" },
        { timeoutMs: 10_000 },
      );
      expect(value).toMatchObject({ count: 5, violations: 0 });
      expect(worker.membership.ownedShards()).toEqual([0, 1, 2, 3]);
      const status = (
        await nc.request(`troupe.${namespace}.ctl.worker.solo.status`, "", { timeout: 2000 })
      ).json<{ id: string; shards: number[]; activeAgents: number }>();
      expect(status).toMatchObject({ id: "solo", shards: [0, 1, 2, 3], activeAgents: 1 });

      await worker.stop();
      expect(worker.membership.ownedShards()).toEqual([]);
      const s = await coordinator.status();
      expect(s.workers).toEqual([]);
      expect(s.unassigned).toEqual([0, 1, 2, 3]);
    } finally {
      await client.close();
      await worker.stop();
      await coordinator.stop();
    }
  });
});
