/**
 * The smallest Troupe agent: a counter. A plain XState v5 machine, plus validators for the
 * events that carry data, written by hand to show what a Standard Schema is.
 */
import { defineAgent, reply } from "@troupe/runtime";
import { assign, setup } from "xstate";

export interface CounterContext {
  count: number;
}

export type CounterEvent =
  | { type: "inc"; by: number }
  | { type: "dec"; by: number }
  | { type: "get" }
  | { type: "reset" };

/** What `get` answers with. */
export interface CounterValue {
  type: "value";
  value: number;
}

export const counterMachine = setup({
  types: {
    context: {} as CounterContext,
    events: {} as CounterEvent,
  },
}).createMachine({
  id: "counter",
  context: { count: 0 },
  on: {
    inc: { actions: assign({ count: ({ context, event }) => context.count + event.by }) },
    dec: { actions: assign({ count: ({ context, event }) => context.count - event.by }) },
    reset: { actions: assign({ count: 0 }) },
    get: {
      actions: reply<CounterContext>(
        ({ context }): CounterValue => ({ type: "value", value: context.count }),
      ),
    },
  },
});

/**
 * A Standard Schema (https://standardschema.dev) is any object with a `~standard` property
 * holding `version: 1`, a `vendor` name and `validate(value)`, which returns `{ value }` or
 * `{ issues: [{ message }] }`. zod, valibot and arktype schemas are such objects already; this
 * one is written by hand so the example needs no schema library.
 */
export interface EventSchema<T> {
  readonly "~standard": {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (
      value: unknown,
    ) =>
      | { readonly value: T; readonly issues?: undefined }
      | { readonly issues: ReadonlyArray<{ message: string; path?: ReadonlyArray<PropertyKey> }> };
    readonly types?: { readonly input: unknown; readonly output: T };
  };
}

/** Accepts `{ type, by }` where `by` is a safe integer; returns a copy without extra fields. */
export function stepEvent<T extends "inc" | "dec">(type: T): EventSchema<{ type: T; by: number }> {
  return {
    "~standard": {
      version: 1,
      vendor: "troupe-example",
      validate(value) {
        const event = value as { type?: unknown; by?: unknown } | null;
        if (typeof event !== "object" || event === null || event.type !== type) {
          return { issues: [{ message: `expected a "${type}" event` }] };
        }
        if (typeof event.by !== "number" || !Number.isSafeInteger(event.by)) {
          return { issues: [{ message: "by must be an integer", path: ["by"] }] };
        }
        return { value: { type, by: event.by } };
      },
    },
  };
}

/** The counter agent: address it as `counter/<key>`; every key is its own counter. */
export const counter = defineAgent({
  type: "counter",
  machine: counterMachine,
  events: { inc: stepEvent("inc"), dec: stepEvent("dec") },
});
