/**
 * Two agents talking: `ping/<key>` serves `pong/<key>` a number of rounds. Pong answers each
 * ping with `reply`; ping keeps the rally going with `sendToAgent` (a reply cannot be replied
 * to) and, asked with `get`, says how many pongs it got. `start` sent as a request is answered
 * when the rally is over (a deferred reply: `currentRequest()` now, `replyTo` later).
 */
import {
  currentRequest,
  defineAgent,
  type ReplyToken,
  reply,
  replyTo,
  sendToAgent,
} from "@troupe/runtime";
import { and, assign, setup } from "xstate";

export interface PingContext {
  /** The key of the pong agent this ping plays with. */
  partner: string;
  /** Rounds asked for by the last `start`. */
  rounds: number;
  /** Pongs received in the current rally. */
  pongs: number;
  /** The ball numbers received, in order (to check ordering). */
  received: number[];
  /** Who asked for the rally with a request, to be answered when it is over. */
  starter: ReplyToken | undefined;
}

export type PingEvent =
  /** Play `rounds` rounds, with `pong/<partner>` (default: `pong/<own key>`). */
  | { type: "start"; rounds: number; partner?: string }
  | { type: "pong"; n: number }
  | { type: "get" };

/** What `ping` answers `get` with. */
export interface PingScore {
  type: "score";
  pongs: number;
  rounds: number;
  received: number[];
  done: boolean;
}

export const pingMachine = setup({
  types: {
    context: {} as PingContext,
    events: {} as PingEvent,
    input: {} as { key: string },
  },
  guards: {
    rallyOver: ({ context }) => context.pongs >= context.rounds,
    hasStarter: ({ context }) => context.starter !== undefined,
  },
}).createMachine({
  id: "ping",
  context: ({ input }) => ({
    partner: input.key,
    rounds: 0,
    pongs: 0,
    received: [],
    starter: undefined,
  }),
  initial: "idle",
  on: {
    get: { actions: reply<PingContext>(({ context }) => score(context)) },
  },
  states: {
    idle: {
      on: {
        start: {
          guard: ({ event }) => Number.isSafeInteger(event.rounds) && event.rounds > 0,
          target: "rally",
          actions: [
            assign({
              partner: ({ context, event }) => event.partner ?? context.partner,
              rounds: ({ event }) => event.rounds,
              pongs: 0,
              received: [],
              // undefined unless `start` came as a request
              starter: () => currentRequest(),
            }),
            sendToAgent<PingContext>(
              "pong",
              ({ context }) => context.partner,
              () => ({ type: "ping", n: 1 }),
            ),
          ],
        },
      },
    },
    rally: {
      always: [
        {
          guard: and(["rallyOver", "hasStarter"]),
          target: "idle",
          actions: [
            replyTo<PingContext>(
              ({ context }) => context.starter,
              ({ context }) => score(context),
            ),
            assign({ starter: undefined }),
          ],
        },
        { guard: "rallyOver", target: "idle" },
      ],
      on: {
        pong: [
          {
            guard: ({ context }) => context.pongs + 1 < context.rounds,
            actions: [
              assign({
                pongs: ({ context }) => context.pongs + 1,
                received: ({ context, event }) => [...context.received, event.n],
              }),
              sendToAgent<PingContext, Extract<PingEvent, { type: "pong" }>>(
                "pong",
                ({ context }) => context.partner,
                ({ event }) => ({ type: "ping", n: event.n + 1 }),
              ),
            ],
          },
          {
            actions: assign({
              pongs: ({ context }) => context.pongs + 1,
              received: ({ context, event }) => [...context.received, event.n],
            }),
          },
        ],
      },
    },
  },
});

function score(context: PingContext): PingScore {
  return {
    type: "score",
    pongs: context.pongs,
    rounds: context.rounds,
    received: context.received,
    done: context.pongs >= context.rounds,
  };
}

export interface PongContext {
  pings: number;
}

export type PongEvent = { type: "ping"; n: number } | { type: "get" };

export const pongMachine = setup({
  types: {
    context: {} as PongContext,
    events: {} as PongEvent,
  },
}).createMachine({
  id: "pong",
  context: { pings: 0 },
  on: {
    ping: {
      actions: [
        assign({ pings: ({ context }) => context.pings + 1 }),
        // back to whichever agent sent the ping
        reply<PongContext, Extract<PongEvent, { type: "ping" }>>(({ event }) => ({
          type: "pong",
          n: event.n,
        })),
      ],
    },
    get: {
      actions: reply<PongContext>(({ context }) => ({ type: "count", pings: context.pings })),
    },
  },
});

/** `ping/<key>` plays with `pong/<key>` unless `start` names another partner. */
export const ping = defineAgent({ type: "ping", machine: pingMachine, input: (key) => ({ key }) });
export const pong = defineAgent({ type: "pong", machine: pongMachine });
