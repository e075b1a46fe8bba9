import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { createCoordinator } from "@troupe/coordinator";
import { LEADER_KEY, openClusterBuckets } from "@troupe/coordinator/internal";
import { namespaceNames } from "@troupe/nats";
import { type NatsServerHandle, startNatsServer } from "@troupe/testkit";
import { isTroupeError } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ParentLogger, startCoordinatorService } from "../src/service.js";

const quiet: ParentLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child: () => quiet,
};

let server: NatsServerHandle;

beforeAll(async () => {
  server = await startNatsServer();
});

afterAll(async () => {
  await server?.cleanup();
});

describe("startCoordinatorService", () => {
  it("creates the namespace, leads, and steps down on stop", async () => {
    const a = await startCoordinatorService({
      servers: [server.url],
      namespace: "svc",
      shardCount: 8,
      leaseMs: 600,
      id: "svc-a",
      logger: quiet,
    });
    expect(a.shardCount).toBe(8);
    const deadline = Date.now() + 5000;
    while (!a.coordinator.isLeader && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(a.coordinator.isLeader).toBe(true);
    const status = await a.coordinator.status();
    expect(status).toMatchObject({ namespace: "svc", shardCount: 8, leader: "svc-a" });

    // a standby without --shards takes the stored count
    const b = await startCoordinatorService({
      servers: [server.url],
      namespace: "svc",
      leaseMs: 600,
      id: "svc-b",
      logger: quiet,
    });
    expect(b.shardCount).toBe(8);
    expect(b.coordinator.isLeader).toBe(false);
    const nc = await connect({ servers: server.url });
    const { cluster } = await openClusterBuckets(nc, "svc");
    const held = await cluster.get(LEADER_KEY);
    expect(held?.operation).toBe("PUT");
    await a.stop();
    // stepping down deletes the lease, so the standby need not wait for it to expire
    expect((await cluster.get(LEADER_KEY))?.operation).toBe("DEL");
    const t0 = performance.now();
    while (!b.coordinator.isLeader && performance.now() - t0 < 5000) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(b.coordinator.isLeader).toBe(true);
    expect((await b.coordinator.status()).leader).toBe("svc-b");
    await nc.close();
    await b.stop();
    await b.stop(); // idempotent
  });

  it("refuses a shard count other than the namespace's (CONFIG_ERROR)", async () => {
    const a = await startCoordinatorService({
      servers: [server.url],
      namespace: "fixed",
      shardCount: 4,
      logger: quiet,
    });
    const err = await startCoordinatorService({
      servers: [server.url],
      namespace: "fixed",
      shardCount: 16,
      logger: quiet,
    }).catch((e: unknown) => e);
    expect(isTroupeError(err) && err.code).toBe("CONFIG_ERROR");
    await a.stop();
  });

  it("creates the inbox with inboxMaxAgeMs; another coordinator's age replaces it", async () => {
    const HOUR = 3600 * 1000;
    const a = await startCoordinatorService({
      servers: [server.url],
      namespace: "aged",
      inboxMaxAgeMs: 2 * HOUR,
      logger: quiet,
    });
    const nc = await connect({ servers: server.url });
    const jsm = await jetstreamManager(nc);
    const { inboxStream } = namespaceNames("aged");
    expect((await jsm.streams.info(inboxStream)).config.max_age).toBe(2 * HOUR * 1e6);
    // without one, the inbox keeps its age; with another, it is changed
    const b = await startCoordinatorService({
      servers: [server.url],
      namespace: "aged",
      logger: quiet,
    });
    expect((await jsm.streams.info(inboxStream)).config.max_age).toBe(2 * HOUR * 1e6);
    const c = await startCoordinatorService({
      servers: [server.url],
      namespace: "aged",
      inboxMaxAgeMs: 24 * HOUR,
      logger: quiet,
    });
    expect((await jsm.streams.info(inboxStream)).config.max_age).toBe(24 * HOUR * 1e6);
    await nc.close();
    await Promise.all([a.stop(), b.stop(), c.stop()]);
  });

  it("stops waiting for NATS when its signal is aborted (SHUTDOWN)", async () => {
    let waiting = false;
    const logger: ParentLogger = {
      ...quiet,
      warn: () => {
        waiting = true;
      },
      child: () => logger,
    };
    const abort = new AbortController();
    const starting = startCoordinatorService({
      servers: ["nats://127.0.0.1:1"],
      namespace: "unreachable",
      signal: abort.signal,
      logger,
    }).catch((e: unknown) => e);
    while (!waiting) await new Promise((r) => setTimeout(r, 10));
    abort.abort();
    const err = await starting;
    expect(isTroupeError(err) && err.code).toBe("SHUTDOWN");
  });

  it("createCoordinator refuses bad settings", () => {
    const nc = {} as never;
    expect(() => createCoordinator({ nc, namespace: "x", id: "has.dot" })).toThrow(/invalid/);
    expect(() => createCoordinator({ nc, namespace: "x", leaseMs: 1 })).toThrow(/leaseMs/);
  });
});
