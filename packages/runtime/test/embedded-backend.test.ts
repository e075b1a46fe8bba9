import type { Frame } from "@troupe/wire";
import { describe, expect, it } from "vitest";
import {
  createEmbeddedBackend,
  createManualClock,
  type Delivery,
  ErrorCode,
  TroupeError,
} from "../src/index.js";

function frame(id: string, to = "counter/a"): Frame {
  return {
    envelope: {
      version: 1,
      kind: "event",
      messageId: id,
      from: "~c",
      to,
      sequence: 1,
      timestampNs: 1n,
    },
    message: { kind: "data", payload: { type: "inc" } },
  };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

// The contract every backend honours (the JetStream backend will run the same checks).
describe("embedded backend contract", () => {
  it("delivers appends in order and forgets acknowledged ones", async () => {
    const b = createEmbeddedBackend();
    const got: Delivery[] = [];
    await b.open("me", { deliver: (d) => got.push(d), direct: () => {} });
    for (let i = 0; i < 5; i++)
      expect((await b.append({ frame: frame(`m${i}`) })).sequence).toBe(i + 1);
    await tick();
    expect(got.map((d) => d.sequence)).toEqual([1, 2, 3, 4, 5]);
    expect(b.unacknowledged).toBe(5);
    for (const d of got) d.ack();
    expect(b.unacknowledged).toBe(0);
    await b.close();
  });

  it("deduplicates by message id within the window, then forgets", async () => {
    const clock = createManualClock();
    const b = createEmbeddedBackend({ clock, duplicateWindowMs: 1000 });
    await b.open("me", { deliver: (d) => d.ack(), direct: () => {} });
    const first = await b.append({ frame: frame("same") });
    expect(await b.append({ frame: frame("same") })).toEqual({
      sequence: first.sequence,
      duplicate: true,
    });
    await clock.advance(1500);
    expect((await b.append({ frame: frame("same") })).duplicate).toBe(false);
    await b.close();
  });

  it("redelivers a nak'd message, marked redelivered", async () => {
    const b = createEmbeddedBackend();
    const got: Delivery[] = [];
    await b.open("me", { deliver: (d) => got.push(d), direct: () => {} });
    await b.append({ frame: frame("x") });
    await tick();
    got[0]!.nak();
    await tick();
    expect(got).toHaveLength(2);
    expect(got[1]!.redelivered).toBe(true);
    got[1]!.ack();
    expect(b.unacknowledged).toBe(0);
    await b.close();
  });

  it("gives unacknowledged messages to the next consumer, in order", async () => {
    const b = createEmbeddedBackend();
    const first: Delivery[] = [];
    await b.open("one", { deliver: (d) => first.push(d), direct: () => {} });
    for (let i = 0; i < 3; i++) await b.append({ frame: frame(`m${i}`) });
    await tick();
    first[1]!.ack();
    await b.close();
    const second: Delivery[] = [];
    await b.open("two", { deliver: (d) => second.push(d), direct: () => {} });
    await tick();
    expect(second.map((d) => [d.sequence, d.redelivered])).toEqual([
      [1, true],
      [3, true],
    ]);
    await b.close();
  });

  it("refuses a second consumer while one is open", async () => {
    const b = createEmbeddedBackend();
    await b.open("one", { deliver: () => {}, direct: () => {} });
    await expect(b.open("two", { deliver: () => {}, direct: () => {} })).rejects.toMatchObject({
      code: ErrorCode.INVALID_STATE,
    });
    await b.close();
  });

  it("stores snapshots with compare-and-set and isolates them from callers", async () => {
    const b = createEmbeddedBackend();
    const record = {
      state: { context: { n: 1 } },
      lastSequence: 3,
      outbox: [],
      sent: 0,
      updatedAt: 1,
    };
    expect(await b.snapshots.put("counter/a", record, 0)).toBe(1);
    record.state.context.n = 99; // the store kept its own copy
    const got = await b.snapshots.get("counter/a");
    expect(got).toEqual({ record: { ...record, state: { context: { n: 1 } } }, revision: 1 });
    const conflict = await b.snapshots.put("counter/a", record, 0).catch((e: unknown) => e);
    expect(conflict).toBeInstanceOf(TroupeError);
    expect((conflict as TroupeError).code).toBe(ErrorCode.STORAGE_ERROR);
    expect((conflict as TroupeError).details?.conflict).toBe(true);
    expect(await b.snapshots.put("counter/a", record, 1)).toBe(2);
    const bad = await b.snapshots
      .put("counter/b", { ...record, state: { f: () => 1 } }, 0)
      .catch((e: unknown) => e);
    expect((bad as TroupeError).code).toBe(ErrorCode.STORAGE_ERROR);
    await b.snapshots.delete("counter/a");
    expect(await b.snapshots.get("counter/a")).toBeUndefined();
  });

  it("sends direct frames only to an open client inbox", async () => {
    const b = createEmbeddedBackend();
    const direct: Frame[] = [];
    await b.open("me", { deliver: () => {}, direct: (f) => direct.push(f as Frame) });
    await b.sendDirect({ frame: frame("r1", "~me") });
    await b.sendDirect({ frame: frame("r2", "~someone-else") });
    expect(direct.map((f) => f.envelope.messageId)).toEqual(["r1"]);
    await b.close();
  });
});
