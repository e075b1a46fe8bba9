import { encodeFrame } from "@troupe/wire";
import { describe, expect, it } from "vitest";
import { setup } from "xstate";
import { z } from "zod";
import {
  type Backend,
  createEmbeddedBackend,
  createRuntime,
  defineAgent,
  sendToAgent,
} from "../src/index.js";
import { counter } from "./fixtures.js";

/** A seeded PRNG (mulberry32) so a failure reproduces. */
function rng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("faults", () => {
  it("garbage bytes on an agent's inbox are parked with typed reasons; the agent keeps working", async () => {
    const strict = defineAgent({
      type: "counter",
      machine: counter.machine,
      events: {
        inc: z.object({ type: z.literal("inc"), by: z.number() }),
        get: z.object({ type: z.literal("get") }),
      },
      strictEvents: true,
    });
    // every frame claims the same sender: sender quarantine (sender-quarantine.test.ts) would
    // refuse it after 5; off here, so each garbage frame meets the decode stages themselves
    const runtime = await createRuntime({ agents: [strict], senderFailureLimit: 0 });
    const ref = runtime.ref("counter", "target");
    await ref.send({ type: "inc", by: 1 });
    const rand = rng(42);
    const valid = encodeFrame({
      envelope: {
        version: 1,
        kind: "event",
        messageId: "v",
        from: "~x",
        to: "counter/target",
        sequence: 1,
        timestampNs: 1n,
      },
      message: { kind: "data", payload: { type: "inc", by: 1000 } },
    });
    const N = 2_000;
    for (let i = 0; i < N; i++) {
      let bytes: Uint8Array;
      if (i % 2 === 0) {
        bytes = new Uint8Array(Math.floor(rand() * 300));
        for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(rand() * 256);
      } else {
        bytes = valid.slice();
        const flips = 1 + Math.floor(rand() * 4);
        for (let f = 0; f < flips; f++)
          bytes[Math.floor(rand() * bytes.length)]! ^= 1 << Math.floor(rand() * 8);
      }
      const envelope = {
        version: 1,
        kind: "event" as const,
        messageId: `g${i}`,
        from: "~x",
        to: "counter/target",
        sequence: 1,
        timestampNs: 1n,
      };
      await runtime.backend.append({ bytes, envelope });
    }
    await runtime.settled();
    const before = (await ref.request<{ value: number }>({ type: "get" })).value;
    expect(Number.isFinite(before)).toBe(true);
    await ref.send({ type: "inc", by: 1 });
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: before + 1 });
    const stats = runtime.stats();
    // error notices to senders whose address a flip garbled are parked too (to nobody): skip them
    const parked = (await runtime.parked(2 * N)).filter((p) => p.to === "counter/target");
    expect(parked.length + stats.processed).toBe(N + 4);
    const codes = new Set(parked.map((p) => p.code));
    for (const c of codes)
      expect([
        "DECODE_ERROR",
        "LIMIT_EXCEEDED",
        "UNSUPPORTED_VERSION",
        "CRYPTO_ERROR",
        "VALIDATION_ERROR",
        "CHANNEL_NOT_FOUND",
      ]).toContain(c);
    expect(parked.length).toBeGreaterThan(N * 0.9);
    await runtime.shutdown();
  });

  it("an output that cannot be encoded quarantines its sender; it never reaches the outbox", async () => {
    // a Date is fine in an embedded event (passed by reference) but not in a frame: with
    // sealing on, every output is encoded, and this one cannot be
    const machine = setup({}).createMachine({
      on: {
        go: {
          actions: sendToAgent("counter", "sink", () => ({ type: "inc", by: 1, at: new Date() })),
        },
      },
    });
    const bad = defineAgent({ type: "bad", machine });
    const backend = createEmbeddedBackend();
    const runtime = await createRuntime({
      agents: [bad, counter],
      backend,
      retryDelayMs: 1,
      sealing: { keys: { k: new Uint8Array(32).fill(7) } },
    });
    await runtime.ref("bad", "b").send({ type: "go" });
    await runtime.settled();
    const status = await runtime.ref("bad", "b").status();
    expect(status.state).toBe("QUARANTINED");
    const [entry] = await runtime.quarantined();
    expect(entry?.address).toBe("bad/b");
    expect(entry?.reason).toMatch(/cannot be sent/);
    // the message is held, nothing was published, no snapshot carries the output
    expect(status.pendingMessageCount).toBe(1);
    expect(runtime.stats().published).toBe(0);
    expect((await backend.snapshots.get("bad/b"))?.record.outbox ?? []).toEqual([]);
    await runtime.shutdown();
  });

  it("messages to unknown agent types are parked and the sender told, not retried", async () => {
    const caller = defineAgent({
      type: "caller",
      machine: setup({ types: { context: {} as { errors: number } } }).createMachine({
        context: { errors: 0 },
        on: {
          go: { actions: sendToAgent("ghost", "1", { type: "boo" }) },
          "troupe.error": { actions: ({ context }) => void context.errors++ },
        },
      }),
    });
    const runtime = await createRuntime({ agents: [caller] });
    await runtime.ref("caller", "c").send({ type: "go" });
    await runtime.settled();
    const parked = await runtime.parked();
    expect(parked).toHaveLength(1);
    expect(parked[0]).toMatchObject({ code: "UNKNOWN_AGENT", to: "ghost/1" });
    expect(runtime.backend.kind).toBe("embedded");
    await runtime.shutdown();
  });

  it("exactly once: outputs stored in the outbox survive a failed publish and are delivered once", async () => {
    const inner = createEmbeddedBackend();
    let failOutputs = true;
    // a backend whose appends of agent outputs fail (the transport went away after the snapshot)
    const flaky: Backend = Object.create(inner, {
      append: {
        value: (out: Parameters<Backend["append"]>[0]) => {
          const env = "frame" in out ? out.frame.envelope : out.envelope;
          if (failOutputs && env.from.startsWith("relay/"))
            return Promise.reject(new Error("link down"));
          return inner.append(out);
        },
      },
    });
    const relay = defineAgent({
      type: "relay",
      machine: setup({}).createMachine({
        on: {
          fwd: {
            actions: sendToAgent("counter", "sink", ({ event }) => ({
              type: "inc",
              by: (event as unknown as { by: number }).by,
            })),
          },
        },
      }),
    });
    const r1 = await createRuntime({ agents: [relay, counter], backend: flaky, retryDelayMs: 5 });
    await r1.ref("relay", "r").send({ type: "fwd", by: 7 });
    // the snapshot (with the output in its outbox) is stored, the publish fails, the host
    // restarts from the snapshot and retries the publish with backoff
    for (let i = 0; i < 200 && (await inner.snapshots.get("relay/r")) === undefined; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    const stored = await inner.snapshots.get("relay/r");
    expect(stored?.record.outbox).toHaveLength(1);
    expect(stored?.record.lastSequence).toBe(1);
    await new Promise((r) => setTimeout(r, 30));
    expect(r1.stats().processed).toBe(1); // the input is not handled again on restart
    failOutputs = false;
    await r1.settled();
    expect(await r1.ref("counter", "sink").request({ type: "get" })).toEqual({
      type: "value",
      value: 7,
    });
    await r1.shutdown();
    // a second runtime on the same store: nothing is delivered twice
    const r2 = await createRuntime({ agents: [relay, counter], backend: inner });
    expect(await r2.ref("counter", "sink").request({ type: "get" })).toEqual({
      type: "value",
      value: 7,
    });
    expect((await inner.snapshots.get("relay/r"))?.record.outbox).toEqual([]);
    await r2.shutdown();
  });
});
