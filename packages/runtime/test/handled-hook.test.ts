/** `onMessageHandled`: the per-delivery hook a process feeds its latency histogram from. */
import { ErrorCode, isTroupeError } from "@troupe/wire";
import { describe, expect, it } from "vitest";
import { createRuntime, type HandledMessage } from "../src/index.js";
import { counter } from "./fixtures.js";

describe("onMessageHandled", () => {
  it("is told about every delivery with its outcome and duration", async () => {
    const seen: HandledMessage[] = [];
    const runtime = await createRuntime({
      agents: [counter],
      maxRetries: 0,
      onMessageHandled: (m) => seen.push(m),
    });
    try {
      const a = runtime.ref(counter, "a");
      for (let i = 0; i < 3; i++) await a.send({ type: "inc", by: 1 });
      await runtime.ref("counter", "b").send({ type: "fail" } as never);
      await runtime.settled();
      const ok = seen.filter((m) => m.address === "counter/a");
      expect(ok.map((m) => m.outcome)).toEqual(["ok", "ok", "ok"]);
      expect(seen.filter((m) => m.address === "counter/b").map((m) => m.outcome)).toEqual([
        "failed",
      ]);
      for (const m of seen) expect(m.durationMs).toBeGreaterThanOrEqual(0);
      expect(runtime.stats().processed).toBe(3);
    } finally {
      await runtime.shutdown();
    }
  });

  it("does not fail the batch when the hook throws", async () => {
    const runtime = await createRuntime({
      agents: [counter],
      onMessageHandled: () => {
        throw new Error("metrics broke");
      },
    });
    try {
      const a = runtime.ref(counter, "a");
      await a.send({ type: "inc", by: 2 });
      expect(await a.request({ type: "get" }, { timeoutMs: 2000 })).toEqual({
        type: "value",
        value: 2,
      });
    } finally {
      await runtime.shutdown();
    }
  });

  it("must be a function", async () => {
    const err = await createRuntime({ onMessageHandled: 42 as never }).catch((e: unknown) => e);
    expect(isTroupeError(err) && err.code).toBe(ErrorCode.CONFIG_ERROR);
  });
});
