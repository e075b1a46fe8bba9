/**
 * Quarantine on NATS: a poisoned agent's messages are held in the parked stream and
 * acknowledged on the inbox, so the healthy agents of its shard keep flowing past the
 * consumer's max_ack_pending; release delivers the held messages in order before new ones.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createRuntime, defineAgent, type Runtime } from "@troupe/runtime";
import { cleanup, type NatsServer, setup } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assign, setup as machineSetup } from "xstate";
import { createNatsBackend, MAX_ACK_PENDING, type NatsBackend } from "../src/internal.js";
import { freshNamespace, waitFor } from "./helpers.js";

/** The poisoned dependency: while active, items flagged `bad` make the handler throw. */
const poison = { active: true };

const logMachine = machineSetup({
  types: {
    context: {} as { seen: number[] },
    events: {} as { type: "item"; n: number; bad?: boolean },
  },
  actions: {
    check: ({ event }) => {
      if (event.bad === true && poison.active) throw new Error(`cannot digest item ${event.n}`);
    },
  },
}).createMachine({
  context: { seen: [] },
  on: {
    item: {
      actions: ["check", assign({ seen: ({ context, event }) => [...context.seen, event.n] })],
    },
  },
});
const logAgent = defineAgent({ type: "log", machine: logMachine });

// one shard: the poisoned agent shares its shard consumer with every healthy agent
const SHARDS = 1;
const HEALTHY = 99;
const PER_HEALTHY = 20;
/** More than the shard consumer's max_ack_pending: holding them in memory would stall it. */
const POISONED_MESSAGES = MAX_ACK_PENDING + 500;

let ns: NatsServer;
let nc: NatsConnection;
let namespace: string;
let backend: NatsBackend;
let runtime: Runtime;

beforeAll(async () => {
  ({ ns, nc } = await setup());
  namespace = freshNamespace("q");
  backend = await createNatsBackend({ nc, namespace, shardCount: SHARDS, shards: "all" });
  runtime = await createRuntime({
    agents: [logAgent],
    backend,
    maxRetries: 2,
    retryDelayMs: 5,
    limits: { maxFrameBytes: backend.maxFrameBytes },
  });
});

afterAll(async () => {
  await runtime?.shutdown();
  await cleanup(ns, nc);
});

/** Sends PER_HEALTHY items to each healthy agent; resolves when all are handled. */
async function healthyRound(round: number): Promise<void> {
  const target = runtime.stats().processed + HEALTHY * PER_HEALTHY;
  await Promise.all(
    Array.from({ length: HEALTHY }, async (_, a) => {
      const ref = runtime.ref(logAgent, `healthy-${a}`);
      for (let i = 0; i < PER_HEALTHY; i++) await ref.send({ type: "item", n: round * 100 + i });
    }),
  );
  await waitFor("the healthy agents' messages", () => runtime.stats().processed >= target, 60_000);
}

async function seenOf(address: string): Promise<number[]> {
  const s = await backend.snapshots.get(address);
  return (s?.record.state as { context: { seen: number[] } } | undefined)?.context.seen ?? [];
}

describe("quarantine on NATS", () => {
  it("parks a poisoned agent's messages so its shard keeps flowing; release delivers them in order first", async () => {
    await healthyRound(0);

    const poisoned = runtime.ref(logAgent, "poisoned");
    await poisoned.send({ type: "item", n: 0 });
    await poisoned.send({ type: "item", n: 1, bad: true });
    await waitFor(
      "the poisoned agent's quarantine",
      async () => (await poisoned.status()).state === "QUARANTINED",
      20_000,
    );
    expect((await runtime.quarantined())[0]).toMatchObject({ address: "log/poisoned", by: "auto" });

    // the poisoned agent keeps receiving, past max_ack_pending, while the healthy ones work
    // and finish (their throughput next to a quarantined agent: `npm run bench`, isolation)
    const flood = (async () => {
      for (let n = 2; n < POISONED_MESSAGES; n++) await poisoned.send({ type: "item", n });
    })();
    await healthyRound(1);
    await flood;
    await runtime.settled();

    // everything the poisoned agent got since its failure is parked, and acknowledged
    const held = POISONED_MESSAGES - 1; // the failed item 1 and all after it
    await waitFor(
      "every poisoned message held",
      async () => (await backend.parked.heldCount("log/poisoned")) === held,
      30_000,
    );
    expect(await poisoned.status()).toMatchObject({
      state: "QUARANTINED",
      pendingMessageCount: held,
    });
    const jsm = await jetstreamManager(nc);
    const consumer = await jsm.consumers.info(backend.names.inboxStream, "shard-0");
    expect(consumer.num_ack_pending).toBe(0);
    expect(await backend.parked.count()).toBe(0); // held messages are not refused frames
    expect((await backend.parked.heldCounts()).get("log/poisoned")).toBe(held);

    // fix the input, release, and send more right away: those wait for the held ones
    poison.active = false;
    expect(await runtime.release(poisoned)).toBe(held);
    const after = POISONED_MESSAGES + 10;
    for (let n = POISONED_MESSAGES; n < after; n++) await poisoned.send({ type: "item", n });
    await waitFor(
      "the released agent's messages",
      async () => (await seenOf("log/poisoned")).length >= after,
      60_000,
    );
    await runtime.settled();
    expect(await seenOf("log/poisoned")).toEqual(Array.from({ length: after }, (_, n) => n));
    expect((await poisoned.status()).state).toBe("ACTIVE");
    expect(await runtime.quarantined()).toEqual([]);
    await waitFor(
      "the delivered held messages removed",
      async () => (await backend.parked.heldCount("log/poisoned")) === 0,
    );
  }, 180_000);
});
