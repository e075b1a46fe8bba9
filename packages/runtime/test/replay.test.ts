import type { Frame, FrameKind } from "@troupe/wire";
import { describe, expect, it } from "vitest";
import { assign, fromPromise, setup } from "xstate";
import { z } from "zod";
import { defineAgent, type ReplayMessage, replayAgent, reply, sendToAgent } from "../src/index.js";

const machine = setup({
  types: {
    context: {} as { count: number; log: string[] },
    events: {} as
      | { type: "inc"; by: number }
      | { type: "get" }
      | { type: "boom" }
      | { type: "tell"; who: string },
  },
}).createMachine({
  context: { count: 0, log: [] },
  initial: "counting",
  states: {
    counting: {
      on: {
        inc: [
          {
            guard: ({ context, event }) => context.count + event.by >= 10,
            target: "full",
            actions: assign({ count: ({ context, event }) => context.count + event.by }),
          },
          { actions: assign({ count: ({ context, event }) => context.count + event.by }) },
        ],
      },
    },
    full: {},
  },
  on: {
    get: { actions: reply(({ context }) => ({ type: "value", value: context.count })) },
    boom: {
      actions: () => {
        throw new Error("boom handler");
      },
    },
    tell: {
      actions: sendToAgent("counter", ({ event }) => event.who, { type: "inc", by: 1 }),
    },
  },
});
const counter = defineAgent({
  type: "counter",
  machine,
  events: { inc: z.object({ type: z.literal("inc"), by: z.number().int().positive() }) },
});

let seq = 0;
function frame(
  payload: unknown,
  opts: { kind?: FrameKind; from?: string; to?: string; replyTo?: string } = {},
) {
  seq += 3; // inbox sequences of one agent are increasing, not contiguous
  const f: Frame = {
    envelope: {
      version: 1,
      kind: opts.kind ?? "event",
      messageId: `m${seq}`,
      from: opts.from ?? "~client",
      to: opts.to ?? "counter/a",
      sequence: seq,
      timestampNs: 0n,
      ...(opts.replyTo === undefined ? {} : { replyTo: opts.replyTo }),
    },
    message: { kind: "data", payload },
  };
  return { sequence: seq, frame: f } satisfies ReplayMessage;
}

describe("replayAgent", () => {
  it("shows each event with the state it led to, and what the agent would have sent", async () => {
    const history = [
      frame({ type: "inc", by: 2 }),
      frame({ type: "get" }, { kind: "request", replyTo: "~client" }),
      frame({ type: "inc", by: 8 }),
      frame({ type: "tell", who: "b" }),
    ];
    const streamed: number[] = [];
    const r = await replayAgent(counter, "counter/a", history, {
      onStep: (s) => streamed.push(s.sequence),
    });
    expect(streamed).toEqual(history.map((h) => h.sequence));
    expect(
      r.steps.map((s) => [s.outcome, s.value, (s.context as { count: number }).count]),
    ).toEqual([
      ["applied", "counting", 2],
      ["applied", "counting", 2],
      ["applied", "full", 10],
      ["applied", "full", 10],
    ]);
    expect(r.steps[1]!.outputs).toEqual([
      { to: "~client", kind: "reply", payload: { type: "value", value: 2 } },
    ]);
    expect(r.steps[3]!.outputs).toEqual([
      { to: "counter/b", kind: "event", payload: { type: "inc", by: 1 } },
    ]);
    expect(r.lastSequence).toBe(history[3]!.sequence);
    expect(r.failed).toBe(0);
    // the final snapshot restores the same state
    const again = await replayAgent(counter, "counter/a", [], { from: r.snapshot });
    expect(again.snapshot).toEqual(r.snapshot);
    expect((r.snapshot as { context: { count: number }; value: string }).value).toBe("full");
  });

  it("skips what the validator refuses, and goes on from the state before a failure", async () => {
    const r = await replayAgent(counter, "counter/a", [
      frame({ type: "inc", by: 1 }),
      frame({ type: "inc", by: -5 }),
      frame({ type: "boom" }),
      frame({ type: "inc", by: 1 }),
    ]);
    expect(r.steps.map((s) => s.outcome)).toEqual(["applied", "rejected", "failed", "applied"]);
    expect(r.steps[2]!.error).toContain("boom handler");
    expect((r.steps[3]!.context as { count: number }).count).toBe(2);
    expect(r.failed).toBe(1);
  });

  it("refuses history that is not this agent's, or out of order", async () => {
    await expect(
      replayAgent(counter, "counter/a", [frame({ type: "get" }, { to: "counter/b" })]),
    ).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    const [x, y] = [frame({ type: "get" }), frame({ type: "get" })];
    await expect(replayAgent(counter, "counter/a", [y, x])).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    await expect(replayAgent(counter, "other/a", [])).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
  });

  it("takes an async history (a stream being read)", async () => {
    async function* history() {
      for (let i = 0; i < 5; i++) yield frame({ type: "inc", by: 1 });
    }
    const r = await replayAgent(counter, "counter/a", history());
    expect((r.snapshot as { context: { count: number } }).context.count).toBe(5);
  });

  it("runs no invoked actor and no timer: a replay has no side effects", async () => {
    let calls = 0;
    const caller = setup({
      types: { context: {} as { asked: number }, events: {} as { type: "ask" } | { type: "poke" } },
      actors: {
        llm: fromPromise(async () => {
          calls++;
          return "answer";
        }),
      },
    }).createMachine({
      context: { asked: 0 },
      initial: "idle",
      states: {
        idle: {
          on: {
            ask: {
              target: "thinking",
              actions: assign({ asked: ({ context }) => context.asked + 1 }),
            },
          },
        },
        thinking: {
          invoke: { src: "llm", onDone: "idle" },
          after: { 10: "idle" },
          on: { poke: "idle" },
        },
      },
    });
    const agent = defineAgent({ type: "caller", machine: caller });
    const at = (payload: unknown) => frame(payload, { to: "caller/x" });
    const r = await replayAgent(agent, "caller/x", [at({ type: "ask" })]);
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(calls).toBe(0);
    expect(r.steps[0]!.value).toBe("thinking");
    expect(r.children).toHaveLength(1);
    // the message that ended it in the live run ends it here too: nothing left running
    const done = await replayAgent(agent, "caller/x", [at({ type: "ask" }), at({ type: "poke" })]);
    expect(done.children).toEqual([]);
    expect((done.snapshot as { context: { asked: number } }).context.asked).toBe(1);
    expect(calls).toBe(0);
  });
});
