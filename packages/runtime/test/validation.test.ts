/**
 * Event validation is one rule (`checkEvent`): the sender's precheck, when it knows the agent
 * type, refuses what the receiver's validate stage refuses, for the same reasons; and the
 * sender of a failed message is told by one rule too (`failureNotice`).
 */
import { ErrorCode, TroupeError } from "@troupe/wire";
import { describe, expect, it } from "vitest";
import { assign, setup } from "xstate";
import { z } from "zod";
import { failureNotice } from "../src/host.js";
import { createRuntime, defineAgent, reply, sendToAgent } from "../src/index.js";
import { counterMachine } from "./fixtures.js";

const strict = defineAgent({
  type: "strict",
  machine: counterMachine,
  events: { inc: z.object({ type: z.literal("inc"), by: z.number() }) },
});

/** Sends `bad` to strict/s on `go` and keeps the error notices it gets back. */
const relay = (bad: unknown) =>
  defineAgent({
    type: "relay",
    machine: setup({ types: { context: {} as { errors: unknown[] } } }).createMachine({
      context: { errors: [] },
      on: {
        go: { actions: sendToAgent("strict", "s", bad as never) },
        "troupe.error": {
          actions: assign({
            errors: ({ context, event }) => [
              ...context.errors,
              (event as unknown as { error: unknown }).error,
            ],
          }),
        },
        get: { actions: reply(({ context }) => ({ type: "errors", errors: context.errors })) },
      },
    }),
  });

async function refusal(p: Promise<unknown>): Promise<TroupeError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(TroupeError);
  return e as TroupeError;
}

describe("event validation at sender and receiver", () => {
  it("the precheck and the validate stage refuse a bad event with the same error", async () => {
    const bad = { type: "inc", by: "lots" };
    const runtime = await createRuntime({ agents: [strict, relay(bad)] });
    const atSender = await refusal(runtime.ref("strict", "s").send(bad as never));
    await runtime.ref("relay", "r").send({ type: "go" });
    await runtime.settled();
    const { errors } = await runtime
      .ref("relay", "r")
      .request<{ errors: { code: string; message: string; details?: unknown }[] }>({
        type: "get",
      });
    expect(errors).toHaveLength(1);
    const atReceiver = errors[0]!;
    expect(atSender.code).toBe(ErrorCode.VALIDATION_ERROR);
    expect(atReceiver.code).toBe(ErrorCode.VALIDATION_ERROR);
    expect(atSender.message).toBe(atReceiver.message);
    expect(atSender.message).toContain('invalid "inc" event for strict: by: ');
    expect(atSender.details).toEqual(atReceiver.details);
    expect(atSender.details?.issues).toEqual([expect.objectContaining({ path: ["by"] })]);
    await runtime.shutdown();
  });

  it("under strictEvents, the runtime's own troupe.* types pass the precheck as they pass the stage", async () => {
    const pinged = defineAgent({
      type: "pinged",
      machine: setup({ types: { context: {} as { pings: number } } }).createMachine({
        context: { pings: 0 },
        on: {
          "troupe.ping": { actions: assign({ pings: ({ context }) => context.pings + 1 }) },
          get: { actions: reply(({ context }) => ({ type: "pings", pings: context.pings })) },
        },
      }),
      events: { get: z.object({ type: z.literal("get") }) },
      strictEvents: true,
    });
    const runtime = await createRuntime({ agents: [pinged] });
    const ref = runtime.ref("pinged", "p");
    await ref.send({ type: "troupe.ping" });
    const other = await refusal(ref.send({ type: "other" }));
    expect(other.code).toBe(ErrorCode.VALIDATION_ERROR);
    expect(other.message).toBe('pinged does not accept events of type "other"');
    expect(await ref.request({ type: "get" })).toEqual({ type: "pings", pings: 1 });
    expect(await runtime.parked()).toEqual([]);
    await runtime.shutdown();
  });

  it("an asynchronous schema is awaited at the sender, and its output is what the machine gets", async () => {
    const incBy = z.object({ type: z.literal("inc"), by: z.string().transform(Number) });
    const asyncInc = defineAgent({
      type: "async-inc",
      machine: counterMachine,
      events: {
        inc: {
          "~standard": {
            version: 1,
            vendor: "test",
            validate: (v: unknown) => Promise.resolve(incBy["~standard"].validate(v)),
          },
        } as never,
      },
    });
    const runtime = await createRuntime({ agents: [asyncInc] });
    const ref = runtime.ref("async-inc", "a");
    await ref.send({ type: "inc", by: "5" } as never);
    const bad = await refusal(ref.send({ type: "inc", by: 5 }));
    expect(bad.code).toBe(ErrorCode.VALIDATION_ERROR);
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: 5 });
    await runtime.shutdown();
  });
});

describe("failureNotice", () => {
  const env = { kind: "request" as const, from: "a/1", messageId: "m1" };
  const err = new TroupeError(ErrorCode.RATE_LIMITED, "slow down", {
    retryAfterMs: 250,
    details: { n: 1 },
  });

  it("goes to replyTo, else the sender, under the correlation id, else the message id", () => {
    expect(failureNotice(env, err)).toEqual({
      to: "a/1",
      correlationId: "m1",
      error: {
        code: ErrorCode.RATE_LIMITED,
        message: "slow down",
        details: { n: 1 },
        retryAfterMs: 250,
      },
    });
    expect(failureNotice({ ...env, replyTo: "~c", correlationId: "c1" }, err)).toMatchObject({
      to: "~c",
      correlationId: "c1",
    });
  });

  it("never answers an error or a reply", () => {
    expect(failureNotice({ ...env, kind: "error" }, err)).toBeUndefined();
    expect(failureNotice({ ...env, kind: "reply" }, err)).toBeUndefined();
  });
});
