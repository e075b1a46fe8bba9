/** maxConcurrentActivations: a burst to agents not in memory reads their state a few at a time. */
import { ErrorCode, TroupeError } from "@troupe/wire";
import { describe, expect, it } from "vitest";
import { type Backend, createEmbeddedBackend, createRuntime } from "../src/index.js";
import { Limiter } from "../src/limiter.js";
import { counter } from "./fixtures.js";

describe("Limiter", () => {
  it("lets n hold at once and hands slots on in arrival order", async () => {
    const l = new Limiter(2);
    const a = await l.acquire();
    const b = await l.acquire();
    const order: string[] = [];
    const c = l.acquire().then((r) => {
      order.push("c");
      return r;
    });
    const d = l.acquire().then((r) => {
      order.push("d");
      return r;
    });
    await Promise.resolve();
    expect(order).toEqual([]);
    expect(l.waiting).toBe(2);
    a();
    a(); // a second call gives back nothing more
    const releaseC = await c;
    expect(order).toEqual(["c"]);
    expect(l.waiting).toBe(1);
    b();
    (await d)();
    releaseC();
    expect(order).toEqual(["c", "d"]);
    // both slots are free again
    await Promise.all([l.acquire(), l.acquire()]);
    expect(l.waiting).toBe(0);
  });
});

describe("maxConcurrentActivations", () => {
  it("bounds the snapshot reads in flight and still activates every agent", async () => {
    const inner = createEmbeddedBackend();
    let inFlight = 0;
    let most = 0;
    const slowSnapshots = Object.create(inner.snapshots, {
      get: {
        value: async (address: string) => {
          inFlight++;
          most = Math.max(most, inFlight);
          await new Promise((r) => setTimeout(r, 2));
          inFlight--;
          return inner.snapshots.get(address);
        },
      },
    });
    const backend: Backend = Object.create(inner, { snapshots: { value: slowSnapshots } });
    const runtime = await createRuntime({
      agents: [counter],
      backend,
      maxConcurrentActivations: 3,
    });
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        runtime.ref(counter, `k${i}`).send({ type: "inc", by: 1 }),
      ),
    );
    await runtime.settled();
    expect(runtime.stats().activations).toBe(40);
    expect(runtime.stats().processed).toBe(40);
    expect(most).toBe(3);
    await runtime.shutdown();
  });

  it("refuses a limit that is not a positive integer", async () => {
    for (const bad of [0, 1.5, -1, Number.NaN]) {
      const e = await createRuntime({ maxConcurrentActivations: bad }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(TroupeError);
      expect((e as TroupeError).code).toBe(ErrorCode.CONFIG_ERROR);
    }
  });
});
