/**
 * Agents talking across worker processes: a coordinator and two workers run from their built
 * `dist/main.js` on one nats-server, hosting the demo (planner → helpers) and ping-pong
 * agents. The agents of each conversation are picked so that they live on different workers;
 * an external client starts the conversations with requests, and gets typed errors for
 * requests nobody answers, unknown agent types and malformed addresses.
 */
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { ClusterStatus } from "@troupe/coordinator";
import type { PlanReply } from "@troupe/example-demo";
import type { PingScore } from "@troupe/example-ping-pong";
import {
  connect,
  namespaceNames,
  shardOfAddress,
  subjectToken,
  type TroupeClient,
} from "@troupe/nats";
import type { NatsServerHandle } from "@troupe/testkit";
import { ErrorCode, encodeFrame, newMessageId } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildApps,
  connectedServer,
  logTail,
  procs,
  repo,
  runCli,
  startBalanced,
  stopProc,
  teardown,
  waitFor,
} from "./procs.js";

const NAMESPACE = "talk";
const SHARDS = 16;
const WORKERS = ["w1", "w2"];
const AGENT_MODULES = [
  join(repo, "examples/demo/dist/index.js"),
  join(repo, "examples/ping-pong/dist/index.js"),
];

let server: NatsServerHandle;
let nc: NatsConnection;
let client: TroupeClient;
let placement: ClusterStatus;

/** Runs the built `troupe` CLI against this cluster. */
const troupe = (...args: string[]) => runCli(server.url, NAMESPACE, ...args);

/** The worker that owns the agent's shard now. */
function ownerOf(address: string): string {
  const shard = shardOfAddress(address, placement.shardCount);
  const owner = placement.workers.find((w) => w.shards.includes(shard))?.id;
  if (owner === undefined) throw new Error(`no worker owns shard ${shard} of ${address}`);
  return owner;
}

/** The first key k (of `prefix-0`, `prefix-1`, …) for which `wanted(k)` holds. */
function pickKey(prefix: string, wanted: (key: string) => boolean): string {
  for (let i = 0; i < 10_000; i++) {
    const key = `${prefix}-${i}`;
    if (wanted(key)) return key;
  }
  throw new Error(`no key with prefix ${prefix} fits`);
}

beforeAll(async () => {
  await buildApps();
  ({ server, nc } = await connectedServer());
  placement = await startBalanced(
    nc,
    { servers: server.url, namespace: NAMESPACE },
    { shards: SHARDS, workers: WORKERS, agents: AGENT_MODULES },
  );
  client = await connect({ servers: server.url, namespace: NAMESPACE });
}, 300_000);

afterAll(async () => {
  await client?.close().catch(() => {});
  await teardown(server, nc);
}, 60_000);

describe("conversations across two worker processes", () => {
  it("a planner fans requests out to helpers on the other worker and answers the client", async () => {
    // helper/<role> addresses are fixed: pick a planner away from at least one of them
    const helperOwners = ["research", "write", "review"].map((r) => ownerOf(`helper/${r}`));
    const key = pickKey("p", (k) => helperOwners.some((o) => o !== ownerOf(`planner/${k}`)));
    const remote = helperOwners.filter((o) => o !== ownerOf(`planner/${key}`)).length;
    const answer = await client
      .ref("planner", key)
      .request<PlanReply>({ type: "plan", goal: "ship it" }, { timeoutMs: 15_000 });
    expect(answer.type).toBe("plan.done");
    if (answer.type !== "plan.done") return;
    expect(answer.goal).toBe("ship it");
    expect(answer.steps.map((s) => s.role)).toEqual(["research", "write", "review"]);
    for (const step of answer.steps) {
      expect(step.instruction).toContain("ship it");
      expect(step.answer.length).toBeGreaterThan(0);
    }
    console.log(
      `planner/${key} on ${ownerOf(`planner/${key}`)}; ${remote} of 3 helpers on the other worker`,
    );
  });

  let rally = "";

  it("ping and pong on different workers keep a 50-ball rally in order", async () => {
    const key = pickKey("game", (k) => ownerOf(`ping/${k}`) !== ownerOf(`pong/${k}`));
    rally = key;
    const final = await client
      .ref("ping", key)
      .request<PingScore>({ type: "start", rounds: 50 }, { timeoutMs: 15_000 });
    expect(final).toEqual({
      type: "score",
      pongs: 50,
      rounds: 50,
      received: Array.from({ length: 50 }, (_, i) => i + 1),
      done: true,
    });
    expect(await client.ref("pong", key).request({ type: "get" })).toEqual({
      type: "count",
      pings: 50,
    });
    // both workers did their part
    const perWorker = await Promise.all(
      WORKERS.map(async (id) =>
        (
          await nc.request(`troupe.${NAMESPACE}.ctl.worker.${id}.status`, "", { timeout: 2000 })
        ).json<{
          stats: { processed: number };
        }>(),
      ),
    );
    for (const w of perWorker) expect(w.stats.processed).toBeGreaterThanOrEqual(50);
  });

  it("a request nobody answers times out with TIMEOUT, and the agent keeps serving", async () => {
    const ref = client.ref("ping", "idle");
    const t0 = performance.now();
    // an idle ping ignores a stray pong: no reply ever comes
    await expect(ref.request({ type: "pong", n: 1 }, { timeoutMs: 500 })).rejects.toMatchObject({
      code: ErrorCode.TIMEOUT,
    });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(450);
    expect(await ref.request<PingScore>({ type: "get" }, { timeoutMs: 5000 })).toMatchObject({
      type: "score",
      pongs: 0,
    });
  });

  it("unknown agent types and malformed addresses get typed errors, not retries", async () => {
    await expect(
      client.ref("no-such-type", "x").request({ type: "hello" }, { timeoutMs: 5000 }),
    ).rejects.toMatchObject({ code: ErrorCode.UNKNOWN_AGENT });
    expect(() => client.ref("ping", "")).toThrowError(
      expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }),
    );
    expect(() => client.ref("Bad Type!", "x")).toThrowError(
      expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }),
    );
    // the workers are still fine
    expect(await client.ref("pong", "after-errors").request({ type: "get" })).toEqual({
      type: "count",
      pings: 0,
    });
  });

  it("troupe replay --dry-run shows the rally step by step on the owner, changing nothing", async () => {
    const r = await troupe("replay", `ping/${rally}`, "--dry-run", "--json");
    expect(r.code, r.stderr).toBe(0);
    const reply = JSON.parse(r.stdout) as {
      worker: string;
      stored: boolean;
      total: number;
      failed: number;
      steps: Array<{ event: { type: string; n?: number }; context: { pongs: number } }>;
      final: { context: { pongs: number; received: number[] } };
    };
    expect(reply.worker).toBe(ownerOf(`ping/${rally}`));
    expect(reply.stored).toBe(false);
    expect(reply.failed).toBe(0);
    // the start request and 50 pongs
    expect(reply.total).toBe(51);
    expect(reply.steps.filter((s) => s.event.type === "pong").map((s) => s.event.n)).toEqual(
      Array.from({ length: 50 }, (_, i) => i + 1),
    );
    expect(reply.final.context.pongs).toBe(50);
    const human = await troupe("replay", `ping/${rally}`, "--dry-run", "--limit", "3");
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/dry run of ping\/\S+ on worker w\d: 51 messages/);
    expect(human.stdout).toContain("nothing was stored or sent");
  });

  it("troupe replay rebuilds an agent's stored state from its history", async () => {
    const r = await troupe("replay", `pong/${rally}`, "--json");
    expect(r.code, r.stderr).toBe(0);
    // 50 pings and the get request
    expect(JSON.parse(r.stdout)).toMatchObject({ stored: true, failed: 0, total: 51 });
    expect(await client.ref("pong", rally).request({ type: "get" })).toEqual({
      type: "count",
      pings: 50,
    });
    const bad = await troupe("replay", "no-such-type/x");
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("UNKNOWN_AGENT");
    const usage = await troupe("replay", "not-an-address");
    expect(usage.code).toBe(2);
  });

  it("a forged sender of bad frames is quarantined on the worker that hosts it", async () => {
    // ping/<k> lives on one worker; garbage claiming to come from it reaches pong/<j> on the
    // other, whose runtime counts it and has the leader quarantine ping/<k> where it lives
    const k = pickKey("spoofed", (x) => ownerOf(`ping/${x}`) === "w1");
    const j = pickKey("target", (x) => ownerOf(`pong/${x}`) === "w2");
    const from = `ping/${k}`;
    const to = `pong/${j}`;
    expect(await client.ref("ping", k).request({ type: "get" })).toMatchObject({ pongs: 0 });
    const subject = namespaceNames(NAMESPACE).inboxSubject(
      shardOfAddress(to, placement.shardCount),
      subjectToken(to),
    );
    const js = jetstream(nc);
    for (let i = 1; i <= 5; i++) {
      const whole = encodeFrame({
        envelope: {
          version: 1,
          kind: "event",
          messageId: newMessageId(),
          from,
          to,
          sequence: i,
          timestampNs: 1n,
        },
        message: { kind: "data", payload: { type: "ping", n: i, pad: "x".repeat(32) } },
      });
      // the envelope reads, the body does not (cut short): DECODE_ERROR at pong's worker
      await js.publish(subject, whole.subarray(0, whole.length - 20), { msgID: newMessageId() });
    }
    const listed = await waitFor("the sender to be quarantined", async () => {
      const r = await troupe("quarantined", "--json");
      const agents = (JSON.parse(r.stdout) as { agents?: Array<{ address: string }> }).agents;
      return agents?.find((a) => a.address === from);
    });
    expect(listed).toMatchObject({ address: from, by: "auto" });
    // on its own worker it is quarantined: what is sent to it is held, not answered
    await expect(
      client.ref("ping", k).request({ type: "get" }, { timeoutMs: 1000 }),
    ).rejects.toMatchObject({ code: ErrorCode.TIMEOUT });
    // pong/<j> keeps serving everyone else
    expect(await client.ref("pong", j).request({ type: "get" })).toEqual({
      type: "count",
      pings: 0,
    });
    const released = await troupe("release", from);
    expect(released.code, released.stderr).toBe(0);
    expect(await client.ref("ping", k).request({ type: "get" })).toMatchObject({ pongs: 0 });
  });

  it("workers and coordinator exit 0 on SIGTERM", async () => {
    const [coordinator, ...workers] = procs;
    const exits = await Promise.all(workers.map((p) => stopProc(p)));
    if (coordinator !== undefined) exits.push(await stopProc(coordinator));
    expect(exits, procs.map((p) => logTail(p)).join("\n")).toEqual([0, 0, 0]);
  });
});
