/**
 * An agent's history read back from the inbox stream, and replayed: the same state the live
 * agent reached, without touching it.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import {
  createRuntime,
  defineAgent,
  type ReplayStep,
  type Runtime,
  replayAgent,
  reply,
} from "@troupe/runtime";
import { cleanup, type NatsServer, setup } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assign, setup as machineSetup } from "xstate";
import {
  agentHistory,
  createNatsBackend,
  ensureNamespace,
  type NamespaceInfo,
  shardOfAddress,
  subjectToken,
} from "../src/index.js";
import { freshNamespace } from "./helpers.js";

const machine = machineSetup({
  types: {
    context: {} as { seen: number[] },
    events: {} as { type: "add"; n: number } | { type: "get" },
  },
}).createMachine({
  context: { seen: [] },
  on: {
    add: { actions: assign({ seen: ({ context, event }) => [...context.seen, event.n] }) },
    get: { actions: reply(({ context }) => ({ type: "seen", seen: context.seen })) },
  },
});
const log = defineAgent({ type: "log", machine });

// the same agent type after a "fix": it records each n doubled
const fixedMachine = machineSetup({
  types: {
    context: {} as { seen: number[] },
    events: {} as { type: "add"; n: number } | { type: "get" },
  },
}).createMachine({
  context: { seen: [] },
  on: {
    add: { actions: assign({ seen: ({ context, event }) => [...context.seen, event.n * 2] }) },
    get: { actions: reply(({ context }) => ({ type: "seen", seen: context.seen })) },
  },
});
const fixedLog = defineAgent({ type: "log", machine: fixedMachine });

let ns: NatsServer;
let nc: NatsConnection;
let info: NamespaceInfo;
let runtime: Runtime;
let namespace: string;

beforeAll(async () => {
  ({ ns, nc } = await setup());
  namespace = freshNamespace("hist");
  const backend = await createNatsBackend({ nc, namespace, shardCount: 4, shards: "all" });
  info = await ensureNamespace(nc, { namespace, create: false });
  runtime = await createRuntime({ agents: [log], backend });
});

afterAll(async () => {
  await runtime?.shutdown();
  await cleanup(ns, nc);
});

describe("agentHistory", () => {
  it("reads one agent's messages in inbox order, skipping others' and garbage", async () => {
    const a = runtime.ref(log, "a");
    const b = runtime.ref(log, "b");
    for (let i = 1; i <= 40; i++) {
      await a.send({ type: "add", n: i });
      await b.send({ type: "add", n: -i });
      // garbage on a's own subject: parked when it arrives, never part of its state
      if (i === 20) {
        const subject = info.names.inboxSubject(shardOfAddress("log/a", 4), subjectToken("log/a"));
        await nc.request(subject, new Uint8Array([1, 2, 3]));
      }
    }
    await runtime.settled();
    const live = await a.request<{ seen: number[] }>({ type: "get" });
    expect(live.seen).toHaveLength(40);

    const skipped: string[] = [];
    const history = [];
    for await (const m of agentHistory(nc, info, "log/a", {
      onSkipped: (_s, why) => skipped.push(why),
    })) {
      history.push(m);
    }
    // 40 adds and the get request; b's messages are on another subject
    expect(history).toHaveLength(41);
    expect(skipped).toHaveLength(1);
    expect(skipped[0]).toContain("not a frame");
    const seqs = history.map((m) => m.sequence);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    expect(history.every((m) => m.frame.envelope.to === "log/a")).toBe(true);

    // replaying it reaches the live state, and the get would have been answered as it was
    const r = await replayAgent(log, "log/a", agentHistory(nc, info, "log/a"));
    expect((r.snapshot as { context: { seen: number[] } }).context.seen).toEqual(live.seen);
    expect(r.steps.at(-1)?.outputs[0]?.payload).toEqual({ type: "seen", seen: live.seen });

    // from a later sequence: only what came from there on
    const from = history[30]!.sequence;
    const tail = [];
    for await (const m of agentHistory(nc, info, "log/a", { fromSequence: from })) tail.push(m);
    expect(tail.map((m) => m.sequence)).toEqual(seqs.slice(30));
  });

  it("an agent with no messages has an empty history", async () => {
    const none = [];
    for await (const m of agentHistory(nc, info, "log/nobody")) none.push(m);
    expect(none).toEqual([]);
  });
});

describe("runtime.replay on NATS", () => {
  it("dry-run: each step up to what the snapshot covers, nothing stored", async () => {
    const ref = runtime.ref(log, "dry");
    for (let i = 1; i <= 5; i++) await ref.send({ type: "add", n: i });
    await runtime.settled();
    const streamed: ReplayStep[] = [];
    const report = await runtime.replay(ref, { dryRun: true, onStep: (s) => streamed.push(s) });
    expect(report).toMatchObject({ dryRun: true, stored: false, failed: 0 });
    expect(streamed.map((s) => (s.context as { seen: number[] }).seen.length)).toEqual([
      1, 2, 3, 4, 5,
    ]);
    expect(report.toSequence).toBe(streamed.at(-1)?.sequence);
    expect(await ref.request({ type: "get" })).toEqual({ type: "seen", seen: [1, 2, 3, 4, 5] });
  });

  it("rebuilds an agent with fixed code from its history; new messages wait and follow", async () => {
    const ref = runtime.ref(log, "fixme");
    for (let i = 1; i <= 20; i++) await ref.send({ type: "add", n: i });
    await runtime.settled();
    await runtime.shutdown();
    // the worker restarts with the fixed definition of the same agent type
    const backend = await createNatsBackend({ nc, namespace, shards: "all" });
    runtime = await createRuntime({ agents: [fixedLog], backend });
    const fixed = runtime.ref(fixedLog, "fixme");
    // until rebuilt, it has the state the old code stored
    expect(await fixed.request({ type: "get" })).toEqual({
      type: "seen",
      seen: Array.from({ length: 20 }, (_, i) => i + 1),
    });
    // sends made while the rebuild runs are applied after it, in order
    const rebuilding = runtime.replay(fixed);
    const during = Promise.all([21, 22, 23].map((n) => fixed.send({ type: "add", n })));
    const report = await rebuilding;
    await during;
    await runtime.settled();
    expect(report).toMatchObject({ dryRun: false, stored: true, failed: 0 });
    expect(report.steps.filter((s) => s.outcome === "applied")).toHaveLength(21); // 20 adds + get
    const after = await fixed.request<{ seen: number[] }>({ type: "get" });
    const doubled = Array.from({ length: 20 }, (_, i) => (i + 1) * 2);
    expect(after.seen.slice(0, 20)).toEqual(doubled);
    // the three sent during the rebuild: after it (doubled by the new code), in order
    expect(after.seen.slice(20)).toEqual([42, 44, 46]);
  });

  it("refuses what it cannot replay, with typed errors", async () => {
    await expect(runtime.replay("nobody/x")).rejects.toMatchObject({ code: "UNKNOWN_AGENT" });
    await expect(runtime.replay("log/x", { fromSequence: 0 })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    const embedded = await createRuntime({ agents: [log] });
    try {
      await expect(embedded.replay("log/x")).rejects.toMatchObject({ code: "INVALID_STATE" });
    } finally {
      await embedded.shutdown();
    }
  });
});
