import { createRuntime, type Runtime } from "@troupe/runtime";
import { afterEach, describe, expect, it } from "vitest";
import { type PingScore, ping, pong } from "../src/index.js";

let runtime: Runtime | undefined;

afterEach(async () => {
  await runtime?.shutdown();
  runtime = undefined;
});

const upTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe("ping-pong example", () => {
  it("plays N rounds, answers the start request when done, and counts the pongs", async () => {
    runtime = await createRuntime({ agents: [ping, pong] });
    const p = runtime.ref("ping", "a");
    const final = await p.request<PingScore>({ type: "start", rounds: 10 }, { timeoutMs: 5000 });
    expect(final).toEqual({ type: "score", pongs: 10, rounds: 10, received: upTo(10), done: true });
    expect(await p.request({ type: "get" })).toEqual(final);
    expect(await runtime.ref("pong", "a").request({ type: "get" })).toEqual({
      type: "count",
      pings: 10,
    });
  });

  it("runs many rallies side by side without mixing them up", async () => {
    runtime = await createRuntime({ agents: [ping, pong] });
    const keys = Array.from({ length: 20 }, (_, i) => `game-${i}`);
    const finals = await Promise.all(
      keys.map((k, i) =>
        runtime!
          .ref("ping", k)
          .request<PingScore>({ type: "start", rounds: i + 1 }, { timeoutMs: 5000 }),
      ),
    );
    for (const [i, score] of finals.entries()) {
      expect(score.pongs).toBe(i + 1);
      expect(score.received).toEqual(upTo(i + 1));
    }
    const stats = runtime.stats();
    // 20 starts, 210 pings, 210 pongs: every message handled exactly once
    expect(stats.processed).toBe(20 + 210 + 210);
    expect(stats.rejected).toBe(0);
    expect(stats.faults).toBe(0);
  });

  it("plays with a partner of another key, and again after a rally", async () => {
    runtime = await createRuntime({ agents: [ping, pong] });
    const p = runtime.ref("ping", "left");
    await p.request({ type: "start", rounds: 3, partner: "right" });
    // the partner is remembered until another is named
    await p.request({ type: "start", rounds: 2 });
    await p.request({ type: "start", rounds: 1, partner: "left" });
    expect(await runtime.ref("pong", "right").request({ type: "get" })).toEqual({
      type: "count",
      pings: 5,
    });
    expect(await runtime.ref("pong", "left").request({ type: "get" })).toEqual({
      type: "count",
      pings: 1,
    });
  });

  // Runtime bug (see the examples report): settled() returns while an agent-to-agent message
  // is appended but not yet delivered, so a rally started with send() is cut short here.
  it("settled() waits for a rally started with a plain send", async () => {
    runtime = await createRuntime({ agents: [ping, pong] });
    await runtime.ref("ping", "s").send({ type: "start", rounds: 10 });
    await runtime.settled();
    expect(await runtime.ref("ping", "s").request<PingScore>({ type: "get" })).toMatchObject({
      pongs: 10,
      done: true,
    });
  });
});
