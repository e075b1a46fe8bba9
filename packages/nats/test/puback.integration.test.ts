/**
 * The PubAck window on a real nats-server: the answers `js.publish` would give (ack,
 * duplicate, API error, no responders, timeout), each settling the right publish.
 */
import { jetstreamManager, StorageType } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { cleanup, type NatsServer, setup } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiCode, apiCode, isTransient, isWrongLastSequence } from "../src/errors.js";
import { PubAckWindow } from "../src/puback.js";

let ns: NatsServer;
let nc: NatsConnection;

beforeAll(async () => {
  ({ ns, nc } = await setup());
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({
    name: "PUBACK",
    subjects: ["puback.>"],
    storage: StorageType.Memory,
    duplicate_window: 60_000_000_000,
  });
});

afterAll(async () => {
  await cleanup(ns, nc);
});

const bytes = (s: string) => new TextEncoder().encode(s);

describe("PubAckWindow", () => {
  it("settles each publish with its own PubAck, in publish order, and dedups by msg id", async () => {
    const w = new PubAckWindow(nc);
    const acks = await Promise.all(
      Array.from({ length: 500 }, (_, i) =>
        w.publish(`puback.order.${i % 7}`, bytes(`m${i}`), { msgID: `order-${i}` }, 5000),
      ),
    );
    const seqs = acks.map((a) => a.seq);
    expect(acks.every((a) => a.stream === "PUBACK" && a.duplicate === false)).toBe(true);
    // the server stored them in the order they were published: strictly increasing
    expect(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!)).toBe(true);
    const again = await w.publish("puback.order.3", bytes("m3"), { msgID: "order-3" }, 5000);
    expect(again).toMatchObject({ duplicate: true, seq: seqs[3] });
    expect(w.pending).toBe(0);
    w.close();
  });

  it("gives the JetStream API error of a compare-and-set that lost", async () => {
    const w = new PubAckWindow(nc);
    const first = await w.publish("puback.cas", bytes("a"), { lastSubjectSequence: 0 }, 5000);
    const second = await w.publish(
      "puback.cas",
      bytes("b"),
      { lastSubjectSequence: first.seq },
      5000,
    );
    expect(second.seq).toBeGreaterThan(first.seq);
    const lost = await w
      .publish("puback.cas", bytes("c"), { lastSubjectSequence: first.seq }, 5000)
      .catch((e: unknown) => e);
    expect(isWrongLastSequence(lost)).toBe(true);
    expect(apiCode(lost)).toBe(ApiCode.WRONG_LAST_SEQUENCE);
    expect(isTransient(lost)).toBe(false);
    w.close();
  });

  it("says no responders (transient) when no stream takes the subject", async () => {
    const w = new PubAckWindow(nc);
    const e = await w.publish("nostream.here", bytes("x"), {}, 5000).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Error);
    expect((e as Error).message).toContain("no responders");
    expect(isTransient(e)).toBe(true);
    w.close();
  });

  it("times out a publish nobody answers, and fails waiting ones on close", async () => {
    const w = new PubAckWindow(nc);
    // a plain subscriber takes the message and never answers: no PubAck, no 503
    const sub = nc.subscribe("silent.subject");
    const t0 = Date.now();
    const e = await w.publish("silent.subject", bytes("x"), {}, 300).catch((x: unknown) => x);
    expect((e as Error).name).toBe("TimeoutError");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    expect(isTransient(e)).toBe(true);
    const waiting = w.publish("silent.subject", bytes("y"), {}, 60_000).catch((x: unknown) => x);
    expect(w.pending).toBe(1);
    w.close();
    expect(((await waiting) as Error).name).toBe("ClosedConnectionError");
    await expect(w.publish("puback.x", bytes("z"), {}, 1000)).rejects.toThrow();
    sub.unsubscribe();
  });

  it("retire() stops listening once the last answer came", async () => {
    const w = new PubAckWindow(nc);
    const p = w.publish("puback.retire", bytes("x"), { msgID: "retire-1" }, 5000);
    w.retire();
    expect((await p).stream).toBe("PUBACK");
    expect(w.pending).toBe(0);
    await expect(w.publish("puback.retire", bytes("y"), {}, 1000)).rejects.toThrow();
  });
});
