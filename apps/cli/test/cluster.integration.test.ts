/**
 * `troupe status`, `send` and `request` in-process against a real nats-server, with the
 * coordinator and one worker (the counter agent) running in this process.
 */

import type { NatsConnection } from "@nats-io/transport-node";
import {
  type Coordinator,
  createCoordinator,
  joinCluster,
  type Membership,
} from "@troupe/coordinator";
import { counter } from "@troupe/example-counter";
import { connectNats, createNatsBackend, ensureNamespace } from "@troupe/nats";
import { createRuntime, type Runtime } from "@troupe/runtime";
import { type NatsServerHandle, natsServerMissing, startNatsServer } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { troupe } from "./helpers.js";

const NS = "clitest";
const SHARDS = 8;

const natsMissing = natsServerMissing();

describe.skipIf(natsMissing !== undefined)(`status, send, request ${natsMissing ?? ""}`, () => {
  let server: NatsServerHandle;
  let nc: NatsConnection;
  let coordinator: Coordinator;
  let runtime: Runtime;
  let membership: Membership;
  let env: Record<string, string>;

  beforeAll(async () => {
    server = await startNatsServer();
    env = { TROUPE_NATS_URL: server.url, TROUPE_NAMESPACE: NS };
    nc = await connectNats(server.url);
    const info = await ensureNamespace(nc, { namespace: NS, shardCount: SHARDS });
    coordinator = createCoordinator({ nc, namespace: NS, id: "coord-test" });
    await coordinator.start();
    const backend = await createNatsBackend({ nc, namespaceInfo: info });
    runtime = await createRuntime({ agents: [counter], backend });
    membership = await joinCluster({
      nc,
      namespace: NS,
      backend,
      runtime,
      id: "worker-a",
      agentTypes: [counter.type],
    });
    // ready once the worker owns every shard
    const deadline = Date.now() + 20_000;
    while (membership.ownedShards().length < SHARDS && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(membership.ownedShards()).toHaveLength(SHARDS);
  }, 30_000);

  afterAll(async () => {
    await membership?.leave().catch(() => {});
    await runtime?.shutdown().catch(() => {});
    await coordinator?.stop().catch(() => {});
    await nc?.close().catch(() => {});
    await server?.cleanup();
  }, 30_000);

  it("status prints the workers, their shards and the leader", async () => {
    const r = await troupe(["status"], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`namespace ${NS}: ${SHARDS} shards, 1 worker, leader coord-test`);
    expect(r.stdout).toMatch(/│ worker-a │ 8\s+│ 0-7\s+│ \d+\s+│ \d+ ms\s+│ no\s+│/);
    expect(r.stdout).toContain("unassigned shards: none");
  });

  it("status --json prints the coordinator's JSON", async () => {
    const r = await troupe(["status", "--json", "--nats", server.url, "--namespace", NS]);
    expect(r.code, r.stderr).toBe(0);
    const status = JSON.parse(r.stdout) as {
      namespace: string;
      shardCount: number;
      leader: string;
      workers: { id: string; shards: number[]; draining: boolean }[];
      unassigned: number[];
    };
    expect(status).toMatchObject({ namespace: NS, shardCount: SHARDS, leader: "coord-test" });
    expect(status.workers).toHaveLength(1);
    expect(status.workers[0]).toMatchObject({ id: "worker-a", draining: false });
    expect(status.workers[0]?.shards).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(status.unassigned).toEqual([]);
  });

  it("status: no coordinator in the namespace → a clear message, exit 1", async () => {
    const r = await troupe(["status", "--namespace", "nobody-home"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `troupe: no coordinator is running in namespace nobody-home at ${server.url}\n`,
    );
    expect(r.stdout).toBe("");
  });

  it("send prints the receipt; request prints the reply as JSON", async () => {
    const sent = await troupe(["send", "counter/alice", '{"type":"inc","by":2}'], env);
    expect(sent.code, sent.stderr).toBe(0);
    expect(sent.stdout).toMatch(/^sent to counter\/alice: messageId \S+, sequence \d+\n$/);

    const json = await troupe(["send", "counter/alice", '{"type":"inc","by":3}', "--json"], env);
    expect(json.code, json.stderr).toBe(0);
    const receipt = JSON.parse(json.stdout) as { to: string; messageId: string; sequence: number };
    expect(receipt.to).toBe("counter/alice");
    expect(receipt.sequence).toBeGreaterThan(0);

    const reply = await troupe(["request", "counter/alice", '{"type":"get"}'], env);
    expect(reply.code, reply.stderr).toBe(0);
    expect(JSON.parse(reply.stdout)).toEqual({ type: "value", value: 5 });
  });

  it("send with --id stores a message once", async () => {
    const args = ["send", "counter/bob", '{"type":"inc","by":1}', "--id", "cli-test-once"];
    const first = await troupe(args, env);
    const again = await troupe(args, env);
    expect(first.code).toBe(0);
    expect(again.code).toBe(0);
    const reply = await troupe(["request", "counter/bob", '{"type":"get"}'], env);
    expect(JSON.parse(reply.stdout)).toEqual({ type: "value", value: 1 });
  });

  it("request: an error reply prints its code and message, exit 1", async () => {
    const invalid = await troupe(["request", "counter/alice", '{"type":"inc","by":"x"}'], env);
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toMatch(
      /^troupe: counter\/alice answered with an error: VALIDATION_ERROR: /,
    );
    const unknown = await troupe(["request", "nobody/x", '{"type":"get"}'], env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/answered with an error: UNKNOWN_AGENT: /);
  });

  it("request: no reply in time → TIMEOUT, exit 1", async () => {
    // inc is handled but never answered
    const started = Date.now();
    const r = await troupe(
      ["request", "counter/carol", '{"type":"inc","by":1}', "--timeout", "300"],
      env,
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^troupe: TIMEOUT: no reply from counter\/carol within 300 ms/);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
