import { describe, expect, it } from "vitest";
import { assign, createMachine, fromPromise, setup, spawnChild } from "xstate";
import { z } from "zod";
import {
  createEmbeddedBackend,
  createRuntime,
  defineAgent,
  ErrorCode,
  LifecycleState,
  reply,
  sendToAgent,
  TroupeError,
} from "../src/index.js";
import { asker, counter, counterMachine, fragile, fragileState } from "./fixtures.js";

async function expectCode(p: Promise<unknown>, code: string): Promise<TroupeError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(TroupeError);
  expect((e as TroupeError).code).toBe(code);
  return e as TroupeError;
}

describe("runtime (embedded)", () => {
  it("sends, replies and reports status", async () => {
    const runtime = await createRuntime({ agents: [counter] });
    const ref = runtime.ref("counter", "a");
    const receipt = await ref.send({ type: "inc", by: 2 });
    expect(receipt.messageId).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(receipt.sequence).toBe(1);
    expect(typeof receipt.timestampNs).toBe("bigint");
    expect(await ref.request({ type: "get" }, { timeoutMs: 1000 })).toEqual({
      type: "value",
      value: 2,
    });
    expect(await ref.status()).toEqual({
      state: "ACTIVE",
      channelCount: 0,
      pendingMessageCount: 0,
    });
    await runtime.shutdown();
    expect((await ref.status()).state).toBe(LifecycleState.UNBOUND);
    await expectCode(ref.send({ type: "inc", by: 1 }), ErrorCode.SHUTDOWN);
  });

  it("delivers 10,000 messages to one agent in order", async () => {
    const runtime = await createRuntime({ agents: [counter] });
    const ref = runtime.ref("counter", "ordered");
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < 10_000; i++) sends.push(ref.send({ type: "inc", by: 1, tag: String(i) }));
    await Promise.all(sends);
    await runtime.settled();
    const backend = runtime.backend;
    const stored = await backend.snapshots.get("counter/ordered");
    const ctx = (stored!.record.state as { context: { count: number; seen: string[] } }).context;
    expect(ctx.count).toBe(10_000);
    expect(ctx.seen).toEqual(Array.from({ length: 10_000 }, (_, i) => String(i)));
    await runtime.shutdown();
  });

  it("runs 1,000 agents concurrently, each with its own exact state", async () => {
    const runtime = await createRuntime({ agents: [counter] });
    const sends: Promise<unknown>[] = [];
    for (let round = 1; round <= 5; round++) {
      for (let a = 0; a < 1000; a++)
        sends.push(runtime.ref("counter", `c${a}`).send({ type: "inc", by: round }));
    }
    await Promise.all(sends);
    await runtime.settled();
    expect(runtime.stats().activeAgents).toBe(1000);
    const values = await Promise.all(
      Array.from({ length: 1000 }, (_, a) =>
        runtime.ref("counter", `c${a}`).request<{ value: number }>({ type: "get" }),
      ),
    );
    expect(values.every((v) => v.value === 15)).toBe(true);
    await runtime.shutdown();
  });

  it("times out a request nobody answers, with a typed error", async () => {
    const silent = defineAgent({
      type: "silent",
      machine: setup({}).createMachine({ on: { ping: {} } }),
    });
    const runtime = await createRuntime({ agents: [silent] });
    const e = await expectCode(
      runtime.ref("silent", "x").request({ type: "ping" }, { timeoutMs: 50 }),
      ErrorCode.TIMEOUT,
    );
    expect(e.message).toContain("silent/x");
    await runtime.shutdown();
  });

  it("rejects unknown agent types and malformed keys and events", async () => {
    const runtime = await createRuntime({ agents: [counter] });
    await expectCode(runtime.ref("nope", "a").send({ type: "x" }), ErrorCode.UNKNOWN_AGENT);
    expect(() => runtime.ref("counter", "")).toThrow(TroupeError);
    expect(() => runtime.ref("Bad Type", "a")).toThrow(/invalid agent type/);
    await expectCode(
      runtime.ref("counter", "a").send({ nottype: 1 } as never),
      ErrorCode.VALIDATION_ERROR,
    );
    await runtime.shutdown();
  });

  it("validates events with Standard Schema (zod) at sender and receiver", async () => {
    const strict = defineAgent({
      type: "strict",
      machine: counterMachine,
      events: { inc: z.object({ type: z.literal("inc"), by: z.number().int().positive() }) },
    });
    const runtime = await createRuntime({ agents: [strict] });
    const ref = runtime.ref("strict", "s");
    const e = await expectCode(
      ref.send({ type: "inc", by: -1 } as never),
      ErrorCode.VALIDATION_ERROR,
    );
    expect(e.message).toContain('invalid "inc" event');
    await ref.send({ type: "inc", by: 3 });
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: 3 });
    await runtime.shutdown();
  });

  it("rejects bad payloads from other agents at the receiver and tells the sender", async () => {
    const strict = defineAgent({
      type: "strict",
      machine: counterMachine,
      events: { inc: z.object({ type: z.literal("inc"), by: z.number() }) },
    });
    const sender = defineAgent({
      type: "sender",
      machine: setup({ types: { context: {} as { errors: string[] } } }).createMachine({
        context: { errors: [] },
        on: {
          go: { actions: sendToAgent("strict", "s", { type: "inc", by: "lots" } as never) },
          "troupe.error": {
            actions: assign({
              errors: ({ context, event }) => [
                ...context.errors,
                (event as unknown as { error: { code: string } }).error.code,
              ],
            }),
          },
          get: { actions: reply(({ context }) => ({ type: "errors", errors: context.errors })) },
        },
      }),
    });
    const runtime = await createRuntime({ agents: [strict, sender] });
    await runtime.ref("sender", "1").send({ type: "go" });
    await runtime.settled();
    expect(await runtime.ref("sender", "1").request({ type: "get" })).toEqual({
      type: "errors",
      errors: ["VALIDATION_ERROR"],
    });
    const parked = await runtime.parked();
    expect(parked).toHaveLength(1);
    expect(parked[0]!.code).toBe("VALIDATION_ERROR");
    await runtime.shutdown();
  });

  it("agent → agent request/reply with a deferred answer", async () => {
    const runtime = await createRuntime({ agents: [counter, asker] });
    await runtime.ref("counter", "k").send({ type: "inc", by: 41 });
    await runtime.ref("counter", "k").send({ type: "inc", by: 1 });
    expect(
      await runtime.ref("asker", "q").request({ type: "ask", target: "k" }, { timeoutMs: 2000 }),
    ).toEqual({
      type: "answer",
      value: 42,
    });
    await runtime.shutdown();
  });

  it("quarantines after maxRetries, holds later messages, releases them in order", async () => {
    fragileState.failing = true;
    const runtime = await createRuntime({
      agents: [fragile, counter],
      retryDelayMs: 1,
      maxRetries: 2,
    });
    const ref = runtime.ref("fragile", "f");
    await ref.send({ type: "item", n: 1 });
    await ref.send({ type: "item", n: 2, poison: true });
    for (let n = 3; n <= 6; n++) await ref.send({ type: "item", n });
    // another agent keeps working meanwhile
    await runtime.ref("counter", "other").send({ type: "inc", by: 1 });
    await runtime.settled();
    const st = await ref.status();
    expect(st.state).toBe("QUARANTINED");
    expect(st.pendingMessageCount).toBe(5);
    const q = await runtime.quarantined();
    expect(q).toHaveLength(1);
    expect(q[0]!.by).toBe("auto");
    expect(q[0]!.reason).toContain("handler failed 3 times");
    expect(runtime.stats().failed).toBe(3);
    expect(await runtime.ref("counter", "other").request({ type: "get" })).toEqual({
      type: "value",
      value: 1,
    });
    fragileState.failing = false;
    expect(await runtime.release(ref)).toBe(5);
    expect(await ref.request({ type: "get" })).toEqual({ type: "log", log: [1, 2, 3, 4, 5, 6] });
    expect((await ref.status()).state).toBe("ACTIVE");
    expect(await runtime.quarantined()).toEqual([]);
    await runtime.shutdown();
  });

  it("quarantines by hand and releases in order; a request to the failing agent gets QUARANTINE_TRIGGERED", async () => {
    const runtime = await createRuntime({ agents: [counter], retryDelayMs: 1, maxRetries: 1 });
    const ref = runtime.ref("counter", "m");
    await ref.send({ type: "inc", by: 1, tag: "a" });
    await runtime.settled();
    await runtime.quarantine(ref, "operator says so");
    await ref.send({ type: "inc", by: 1, tag: "b" });
    await ref.send({ type: "inc", by: 1, tag: "c" });
    await runtime.settled();
    expect(await ref.status()).toMatchObject({ state: "QUARANTINED", pendingMessageCount: 2 });
    expect((await runtime.quarantined())[0]).toMatchObject({
      address: "counter/m",
      reason: "operator says so",
      by: "manual",
    });
    await expectCode(runtime.release("counter/zzz"), ErrorCode.INVALID_STATE);
    expect(await runtime.release(ref)).toBe(2);
    const final = await runtime.backend.snapshots.get("counter/m");
    await runtime.settled();
    const stored = await runtime.backend.snapshots.get("counter/m");
    expect((stored!.record.state as { context: { seen: string[] } }).context.seen).toEqual([
      "a",
      "b",
      "c",
    ]);
    expect(final).toBeDefined();
    await expectCode(
      ref.request({ type: "fail" }, { timeoutMs: 2000 }),
      ErrorCode.QUARANTINE_TRIGGERED,
    );
    await runtime.shutdown();
  });

  it("passivates idle agents and restores their state exactly on reactivation", async () => {
    const { createManualClock } = await import("../src/index.js");
    const clock = createManualClock();
    const runtime = await createRuntime({ agents: [counter], idleTimeoutMs: 1000, clock });
    const ref = runtime.ref("counter", "p");
    for (let i = 0; i < 3; i++) await ref.send({ type: "inc", by: 5, tag: `t${i}` });
    await runtime.settled();
    const host = (runtime as unknown as { hosts: Map<string, { persisted: unknown }> }).hosts.get(
      "counter/p",
    )!;
    const before = structuredClone(host.persisted);
    await clock.advance(2000);
    await runtime.settled();
    expect(runtime.stats().activeAgents).toBe(0);
    expect(runtime.stats().passivations).toBe(1);
    expect((await ref.status()).state).toBe("BOUND");
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: 15 });
    const again = (runtime as unknown as { hosts: Map<string, { persisted: unknown }> }).hosts.get(
      "counter/p",
    )!;
    expect(again.persisted).toEqual(before);
    expect(runtime.stats().activations).toBe(2);
    await runtime.shutdown();
  });

  it("sweeps as often as the shortest idle timeout of a type needs, not only the runtime's", async () => {
    const { createManualClock, defineAgent } = await import("../src/index.js");
    const clock = createManualClock();
    const brief = defineAgent({ type: "brief", machine: counter.machine, idleTimeoutMs: 200 });
    // the runtime's own timeout is long (its sweep alone would run every 5 s)
    const runtime = await createRuntime({
      agents: [counter, brief],
      idleTimeoutMs: 60_000,
      clock,
    });
    await runtime.ref("brief", "b").send({ type: "inc", by: 1 });
    await runtime.ref("counter", "c").send({ type: "inc", by: 1 });
    await runtime.settled();
    await clock.advance(300);
    await runtime.settled();
    // idle 300 ms ≥ 200: gone by the sweep at 300 ms (every 100 ms); the other stays
    expect((await runtime.ref("brief", "b").status()).state).toBe("BOUND");
    expect((await runtime.ref("counter", "c").status()).state).toBe("ACTIVE");
    expect(runtime.stats().passivations).toBe(1);
    await runtime.shutdown();
  });

  it("shutdown persists everything; a new runtime on the same backend carries on", async () => {
    const backend = createEmbeddedBackend();
    const r1 = await createRuntime({ agents: [counter], backend });
    for (let i = 0; i < 50; i++) void r1.ref("counter", `s${i % 5}`).send({ type: "inc", by: 1 });
    await r1.shutdown();
    expect(backend.unacknowledged).toBe(0);
    const r2 = await createRuntime({ agents: [counter], backend });
    for (let i = 0; i < 5; i++) {
      expect(await r2.ref("counter", `s${i}`).request({ type: "get" })).toEqual({
        type: "value",
        value: 10,
      });
    }
    await r2.shutdown();
  });

  it("an agent's failure never kills the host process (XState's unobserved error)", async () => {
    const runtime = await createRuntime({ agents: [counter], retryDelayMs: 1, maxRetries: 0 });
    await runtime.ref("counter", "x").send({ type: "fail" });
    await runtime.settled();
    await new Promise((r) => setTimeout(r, 20));
    expect((await runtime.ref("counter", "x").status()).state).toBe("QUARANTINED");
    await runtime.shutdown();
  });

  it("refuses inline (unpersistable) child logic with a clear reason", async () => {
    const inline = defineAgent({
      type: "inline",
      machine: createMachine({
        on: {
          go: {
            actions: spawnChild(
              fromPromise(async () => 1),
              { id: "worker" },
            ),
          },
        },
      }),
    });
    const runtime = await createRuntime({ agents: [inline] });
    await runtime.ref("inline", "i").send({ type: "go" });
    await runtime.settled();
    const q = await runtime.quarantined();
    expect(q[0]?.reason).toMatch(/"worker" with inline logic.*setup\(\{ actors/);
    await runtime.shutdown();
  });

  it("runs custom stages in order when hooks are enabled, and refuses them otherwise", async () => {
    const plain = await createRuntime({ agents: [counter] });
    expect(() => plain.use({ name: "x", order: 1, run: () => undefined })).toThrow(/enableHooks/);
    await plain.shutdown();

    const seen: string[] = [];
    const runtime = await createRuntime({ agents: [counter], enableHooks: true });
    runtime.use({
      name: "audit",
      order: 450,
      run: (ctx) => void seen.push(`audit:${ctx.envelope?.kind}`),
    });
    runtime.use({
      name: "deny-big",
      order: 550,
      run: (ctx) => {
        if ((ctx.event as { by?: number }).by === 1000)
          throw new TroupeError(ErrorCode.UNAUTHORIZED, "too big");
        return undefined;
      },
    });
    expect(runtime.stages().map((s) => s.name)).toEqual([
      "decode",
      "dedup",
      "sender",
      "open",
      "validate",
      "audit",
      "authorize",
      "deny-big",
      "rate-limit",
      "handler",
    ]);
    expect(() => runtime.use({ name: "late", order: 1000, run: () => undefined })).toThrow(
      /handler is always last/,
    );
    const ref = runtime.ref("counter", "h");
    await ref.send({ type: "inc", by: 1000 });
    await ref.send({ type: "inc", by: 1 });
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: 1 });
    expect(seen).toEqual(["audit:event", "audit:event", "audit:request"]);
    expect((await runtime.parked())[0]).toMatchObject({ code: "UNAUTHORIZED", reason: "too big" });
    await runtime.shutdown();
  });

  it("deduplicates sends with the same messageId", async () => {
    const runtime = await createRuntime({ agents: [counter] });
    const ref = runtime.ref("counter", "d");
    const a = await ref.send({ type: "inc", by: 1 }, { messageId: "order-1" });
    const b = await ref.send({ type: "inc", by: 1 }, { messageId: "order-1" });
    expect(b.sequence).toBe(a.sequence);
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: 1 });
    await runtime.shutdown();
  });

  it("validates its configuration", async () => {
    await expectCode(createRuntime({ maxRetries: -1 }), ErrorCode.CONFIG_ERROR);
    await expectCode(createRuntime({ agents: [counter, counter] }), ErrorCode.CONFIG_ERROR);
    await expectCode(createRuntime({ agents: [{} as never] }), ErrorCode.CONFIG_ERROR);
  });

  it("refuses decode limits the codec would refuse on every frame, at start", async () => {
    await expectCode(createRuntime({ limits: { maxDepth: 2.5 } }), ErrorCode.CONFIG_ERROR);
    await expectCode(createRuntime({ limits: { maxFrameBytes: 0 } }), ErrorCode.CONFIG_ERROR);
  });
});

describe("runtime (embedded): lifecycle edges", () => {
  it("settled() waits for chains of agent-to-agent messages", async () => {
    const relay = defineAgent({
      type: "relay",
      machine: setup({}).createMachine({
        on: {
          hop: {
            actions: sendToAgent(
              "relay",
              ({ event }) => String(event.n + 1),
              ({ event }) => (event.n < 5 ? { type: "hop", n: event.n + 1 } : { type: "end" }),
            ),
          },
        },
      }),
    });
    const runtime = await createRuntime({ agents: [relay] });
    await runtime.ref("relay", "1").send({ type: "hop", n: 1 });
    await runtime.settled();
    expect(runtime.stats().processed).toBe(6);
    await runtime.shutdown();
  });

  it("an agent that fails to start is retried, then quarantined, and its sender told", async () => {
    const broken = defineAgent({
      type: "broken",
      machine: setup({ types: { input: {} as { n: number } } }).createMachine({
        context: ({ input }) => ({ n: input.n }),
      }),
    });
    const runtime = await createRuntime({ agents: [broken], retryDelayMs: 1, maxRetries: 2 });
    const e = await runtime
      .ref("broken", "x")
      .request({ type: "go" }, { timeoutMs: 2000 })
      .catch((err: unknown) => err);
    expect((e as TroupeError).code).toBe(ErrorCode.QUARANTINE_TRIGGERED);
    expect((await runtime.quarantined())[0]?.reason).toMatch(/failed to start 3 times/);
    expect(await runtime.ref("broken", "x").status()).toMatchObject({
      state: "QUARANTINED",
      pendingMessageCount: 1,
    });
    expect(runtime.stats().retries).toBe(2);
    await runtime.shutdown();
  });

  it("a troupe.error carries the correlation id the sender chose", async () => {
    const strict = defineAgent({
      type: "strict",
      machine: counterMachine,
      events: { inc: z.object({ type: z.literal("inc"), by: z.number() }) },
    });
    const sender = defineAgent({
      type: "sender",
      machine: setup({ types: { context: {} as { failed: string[] } } }).createMachine({
        context: { failed: [] },
        on: {
          go: {
            actions: sendToAgent(
              "strict",
              "s",
              { type: "inc", by: "x" },
              { correlationId: "plan-7" },
            ),
          },
          "troupe.error": {
            actions: assign({
              failed: ({ context, event }) => [
                ...context.failed,
                String((event as { correlationId?: string }).correlationId),
              ],
            }),
          },
          get: { actions: reply(({ context }) => ({ type: "failed", failed: context.failed })) },
        },
      }),
    });
    const runtime = await createRuntime({ agents: [strict, sender] });
    await runtime.ref("sender", "1").send({ type: "go" });
    await runtime.settled();
    expect(await runtime.ref("sender", "1").request({ type: "get" })).toEqual({
      type: "failed",
      failed: ["plan-7"],
    });
    await runtime.shutdown();
  });
});

describe("runtime (embedded): defaults and errors outside message handling", () => {
  /** Lets deliveries (setImmediate) and microtasks run without moving the manual clock. */
  async function turns(n = 10): Promise<void> {
    for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
  }

  it("by default retries 3 times after 100, 200 and 400 ms, then quarantines", async () => {
    const { createManualClock } = await import("../src/index.js");
    const clock = createManualClock();
    const runtime = await createRuntime({ agents: [counter], clock });
    const ref = runtime.ref("counter", "defaults");
    await ref.send({ type: "fail" });
    await turns();
    expect(runtime.stats()).toMatchObject({ failed: 1, retries: 1, quarantines: 0 });
    for (const delay of [100, 200, 400]) {
      const failed = runtime.stats().failed;
      await clock.advance(delay - 1);
      await turns();
      expect(runtime.stats().failed).toBe(failed); // not yet
      await clock.advance(1);
      await turns();
      expect(runtime.stats().failed).toBe(failed + 1);
    }
    expect(runtime.stats()).toMatchObject({ failed: 4, retries: 3, quarantines: 1 });
    expect(await ref.status()).toMatchObject({ state: "QUARANTINED", pendingMessageCount: 1 });
    expect((await runtime.quarantined())[0]?.reason).toContain("handler failed 4 times");
    await runtime.shutdown();
  });

  it("hooks are off by default", async () => {
    const runtime = await createRuntime({ agents: [counter] });
    expect(() => runtime.use({ name: "x", order: 1, run: () => undefined })).toThrow(TroupeError);
    await runtime.shutdown();
  });

  it("an error thrown outside message handling (a delayed action) never kills the host", async () => {
    let thrown = 0;
    const late = defineAgent({
      type: "late",
      machine: setup({ types: { context: {} as { n: number } } }).createMachine({
        context: { n: 0 },
        initial: "idle",
        states: {
          idle: { on: { arm: "armed" } },
          armed: {
            after: {
              5: {
                target: "idle",
                actions: () => {
                  thrown++;
                  throw new Error("late boom");
                },
              },
            },
          },
        },
        on: {
          inc: { actions: assign({ n: ({ context }) => context.n + 1 }) },
          get: { actions: reply(({ context }) => ({ type: "value", value: context.n })) },
        },
      }),
    });
    const runtime = await createRuntime({ agents: [late] });
    const ref = runtime.ref("late", "x");
    await ref.send({ type: "inc" });
    await ref.send({ type: "arm" });
    await runtime.settled();
    await new Promise((r) => setTimeout(r, 50));
    expect(thrown).toBe(1);
    // restarted from its last stored state; still taking messages
    expect((await ref.status()).state).toBe("ACTIVE");
    await ref.send({ type: "inc" });
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: 2 });
    await runtime.shutdown();
  });
});
