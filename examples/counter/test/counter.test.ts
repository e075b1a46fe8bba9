import {
  createEmbeddedBackend,
  createRuntime,
  ErrorCode,
  LifecycleState,
  type Runtime,
  TroupeError,
} from "@troupe/runtime";
import { afterEach, describe, expect, it } from "vitest";
import { createActor } from "xstate";
import { type CounterValue, counter, counterMachine, stepEvent } from "../src/index.js";

let runtime: Runtime | undefined;

afterEach(async () => {
  await runtime?.shutdown();
  runtime = undefined;
});

async function rejection(p: Promise<unknown>): Promise<TroupeError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(TroupeError);
  return e as TroupeError;
}

describe("counter example", () => {
  it("counts up and down and answers get", async () => {
    runtime = await createRuntime({ agents: [counter] });
    const ref = runtime.ref("counter", "a");
    const receipt = await ref.send({ type: "inc", by: 5 });
    expect(receipt.sequence).toBeGreaterThan(0);
    await ref.send({ type: "dec", by: 2 });
    expect(await ref.request<CounterValue>({ type: "get" }, { timeoutMs: 2000 })).toEqual({
      type: "value",
      value: 3,
    });
    await ref.send({ type: "reset" });
    expect(await ref.request<CounterValue>({ type: "get" })).toEqual({ type: "value", value: 0 });
  });

  it("keeps one counter per key", async () => {
    runtime = await createRuntime({ agents: [counter] });
    await runtime.ref("counter", "x").send({ type: "inc", by: 1 });
    await runtime.ref("counter", "y").send({ type: "inc", by: 10 });
    expect(await runtime.ref("counter", "x").request({ type: "get" })).toEqual({
      type: "value",
      value: 1,
    });
    expect(await runtime.ref("counter", "y").request({ type: "get" })).toEqual({
      type: "value",
      value: 10,
    });
  });

  it("refuses an invalid event with VALIDATION_ERROR", async () => {
    runtime = await createRuntime({ agents: [counter] });
    // a ref made from the definition checks events at compile time too
    const ref = runtime.ref(counter, "v");
    // @ts-expect-error `by` is a number: the validator catches what types cannot (JSON input…)
    const e = await rejection(ref.send({ type: "inc", by: "x" }));
    expect(e.code).toBe(ErrorCode.VALIDATION_ERROR);
    expect(e.message).toContain("by must be an integer");
    await ref.send({ type: "inc", by: 1 });
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: 1 });
  });

  it("reports its status", async () => {
    runtime = await createRuntime({ agents: [counter] });
    const ref = runtime.ref("counter", "s");
    // virtual: addressable before its first message, activated by it
    expect((await ref.status()).state).toBe(LifecycleState.BOUND);
    await ref.request({ type: "get" });
    expect(await ref.status()).toEqual({
      state: LifecycleState.ACTIVE,
      channelCount: 0,
      pendingMessageCount: 0,
    });
    await runtime.shutdown();
    expect((await ref.status()).state).toBe(LifecycleState.UNBOUND);
  });

  it("keeps its count across a runtime restart on the same backend", async () => {
    const backend = createEmbeddedBackend();
    runtime = await createRuntime({ agents: [counter], backend });
    await runtime.ref("counter", "p").send({ type: "inc", by: 7 });
    await runtime.settled();
    await runtime.shutdown();
    runtime = await createRuntime({ agents: [counter], backend });
    expect(await runtime.ref("counter", "p").request({ type: "get" })).toEqual({
      type: "value",
      value: 7,
    });
  });

  it("is a plain XState machine: runs without Troupe (except reply)", () => {
    const actor = createActor(counterMachine).start();
    actor.send({ type: "inc", by: 4 });
    actor.send({ type: "dec", by: 1 });
    expect(actor.getSnapshot().context.count).toBe(3);
    actor.stop();
  });

  it("has Standard Schema validators", () => {
    const schema = stepEvent("inc")["~standard"];
    expect(schema.version).toBe(1);
    expect(schema.validate({ type: "inc", by: 2, extra: true })).toEqual({
      value: { type: "inc", by: 2 },
    });
    expect(schema.validate({ type: "inc", by: 1.5 }).issues?.[0]?.message).toBe(
      "by must be an integer",
    );
    expect(schema.validate(null).issues).toHaveLength(1);
  });
});
