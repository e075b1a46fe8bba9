/** Test agents shared by the runtime tests. */
import { assign, setup } from "xstate";
import { currentRequest, defineAgent, reply, replyTo, sendToAgent } from "../src/index.js";

export const counterMachine = setup({
  types: {
    context: {} as { count: number; seen: string[] },
    events: {} as { type: "inc"; by: number; tag?: string } | { type: "get" } | { type: "fail" },
  },
}).createMachine({
  id: "counter",
  context: { count: 0, seen: [] },
  on: {
    inc: {
      actions: assign({
        count: ({ context, event }) => context.count + event.by,
        seen: ({ context, event }) =>
          event.tag === undefined ? context.seen : [...context.seen, event.tag],
      }),
    },
    get: { actions: reply(({ context }) => ({ type: "value", value: context.count })) },
    fail: {
      actions: () => {
        throw new Error("boom");
      },
    },
  },
});

export const counter = defineAgent({ type: "counter", machine: counterMachine });

/** Fails on `inc` while its `poison` flag from the event is set: used for quarantine tests. */
export const fragileMachine = setup({
  types: {
    context: {} as { log: number[] },
    events: {} as { type: "item"; n: number; poison?: boolean } | { type: "get" },
  },
}).createMachine({
  context: { log: [] },
  on: {
    item: {
      actions: [
        ({ event }) => {
          if (event.poison && fragileState.failing) throw new Error(`poisoned item ${event.n}`);
        },
        assign({ log: ({ context, event }) => [...context.log, event.n] }),
      ],
    },
    get: { actions: reply(({ context }) => ({ type: "log", log: context.log })) },
  },
});
export const fragileState = { failing: true };
export const fragile = defineAgent({ type: "fragile", machine: fragileMachine });

/** Asks a counter for its value and forwards it to whoever asked (agent → agent request/reply). */
export const askerMachine = setup({
  types: {
    context: {} as { pending: ReturnType<typeof currentRequest>; answers: number },
    events: {} as { type: "ask"; target: string } | { type: "value"; value: number },
  },
}).createMachine({
  context: { pending: undefined, answers: 0 },
  on: {
    ask: {
      actions: [
        assign({ pending: () => currentRequest() }),
        sendToAgent("counter", ({ event }) => (event as { target: string }).target, {
          type: "get",
        }),
      ],
    },
    value: {
      actions: [
        assign({ answers: ({ context }) => context.answers + 1 }),
        replyTo(
          ({ context }) => context.pending,
          ({ event }) => ({ type: "answer", value: (event as { value: number }).value }),
        ),
      ],
    },
  },
});
export const asker = defineAgent({ type: "asker", machine: askerMachine });
