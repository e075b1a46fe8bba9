/**
 * The backend contract (packages/runtime/test/embedded-backend.test.ts) on a real
 * nats-server, plus what only a distributed backend has: handing shards between consumers.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { cleanup, type NatsServer, setup } from "@troupe/testkit";
import { ErrorCode, encodeFrame, type Frame, sealFrame, TroupeError } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createNatsBackend,
  type NatsBackend,
  namespaceNames,
  shardOfAddress,
} from "../src/index.js";
import { collector, connectTo, frame, freshNamespace, sleep, waitFor } from "./helpers.js";

const SHARDS = 4;
let ns: NatsServer;
let nc: NatsConnection;
const opened: NatsBackend[] = [];
const extra: NatsConnection[] = [];

beforeAll(async () => {
  ({ ns, nc } = await setup());
});

afterAll(async () => {
  await Promise.allSettled(opened.map((b) => b.close()));
  await cleanup(ns, nc, ...extra);
});

async function backend(namespace: string, conn = nc): Promise<NatsBackend> {
  const b = await createNatsBackend({ nc: conn, namespace, shardCount: SHARDS });
  opened.push(b);
  return b;
}

async function ackPending(namespace: string, address = "counter/a"): Promise<number> {
  const names = namespaceNames(namespace);
  const jsm = await jetstreamManager(nc);
  const info = await jsm.consumers.info(
    names.inboxStream,
    names.shardConsumer(shardOfAddress(address, SHARDS)),
  );
  return info.num_ack_pending;
}

describe("NATS backend contract", () => {
  it("delivers appends in order and forgets acknowledged ones", async () => {
    const namespace = freshNamespace();
    const b = await backend(namespace);
    const c = collector();
    await b.open("me", c.handlers);
    await b.ownShards([shardOfAddress("counter/a", SHARDS)]);
    const t0 = performance.now();
    const seqs: number[] = [];
    for (let i = 0; i < 5; i++) seqs.push((await b.append({ frame: frame(`m${i}`) })).sequence);
    const perAppend = (performance.now() - t0) / 5;
    expect(seqs).toEqual([1, 2, 3, 4, 5]);
    await waitFor("5 deliveries", () => c.got.length === 5);
    expect(c.got.map((d) => d.sequence)).toEqual([1, 2, 3, 4, 5]);
    expect(c.got.every((d) => d.to === "counter/a" && !d.redelivered)).toBe(true);
    expect(c.got.map((d) => encodeFrame(frame(`m${d.sequence - 1}`)).length)).toEqual(
      c.got.map((d) => d.bytes?.length),
    );
    expect(await ackPending(namespace)).toBe(5);
    for (const d of c.got) d.ack();
    await waitFor("acks to land", async () => (await ackPending(namespace)) === 0);
    await b.close();
    console.log(`append → PubAck, sequential: ${perAppend.toFixed(2)} ms each`);
  });

  it("deduplicates by message id (Nats-Msg-Id)", async () => {
    const namespace = freshNamespace();
    const b = await backend(namespace);
    await b.open("me", collector().handlers);
    const first = await b.append({ frame: frame("same") });
    expect(first.duplicate).toBe(false);
    expect(await b.append({ frame: frame("same") })).toEqual({
      sequence: first.sequence,
      duplicate: true,
    });
    // bytes with their envelope (how sealed frames travel) dedup the same way
    const f = frame("same");
    expect(await b.append({ bytes: encodeFrame(f), envelope: f.envelope })).toEqual({
      sequence: first.sequence,
      duplicate: true,
    });
    const jsm = await jetstreamManager(nc);
    expect((await jsm.streams.info(namespaceNames(namespace).inboxStream)).state.messages).toBe(1);
    await b.close();
  });

  it("redelivers a nak'd message, marked redelivered", async () => {
    const namespace = freshNamespace();
    const b = await backend(namespace);
    const c = collector();
    await b.open("me", c.handlers);
    await b.ownShards([shardOfAddress("counter/a", SHARDS)]);
    await b.append({ frame: frame("x") });
    await waitFor("delivery", () => c.got.length === 1);
    c.got[0]!.nak();
    await waitFor("redelivery", () => c.got.length === 2);
    expect(c.got[1]!.redelivered).toBe(true);
    expect(c.got[1]!.sequence).toBe(c.got[0]!.sequence);
    c.got[1]!.ack();
    await waitFor("ack", async () => (await ackPending(namespace)) === 0);
    // with a delay: not before it
    await b.append({ frame: frame("y") });
    await waitFor("delivery", () => c.got.length === 3);
    const t = Date.now();
    c.got[2]!.nak(400);
    await waitFor("delayed redelivery", () => c.got.length === 4);
    expect(Date.now() - t).toBeGreaterThanOrEqual(350);
    c.got[3]!.ack();
    await b.close();
  });

  it("gives unacknowledged messages to the next consumer, in order (close, then own)", async () => {
    const namespace = freshNamespace();
    const shard = shardOfAddress("counter/a", SHARDS);
    const one = await backend(namespace);
    const first = collector();
    await one.open("one", first.handlers);
    await one.ownShards([shard]);
    for (let i = 0; i < 3; i++) await one.append({ frame: frame(`m${i}`) });
    await waitFor("3 deliveries", () => first.got.length === 3);
    first.got[1]!.ack();
    await one.close();
    const nc2 = await connectTo(ns.url);
    extra.push(nc2);
    const two = await backend(namespace, nc2);
    const second = collector();
    await two.open("two", second.handlers);
    await two.ownShards([shard]);
    await waitFor("2 redeliveries", () => second.got.length === 2);
    await sleep(100);
    expect(second.got.map((d) => [d.sequence, d.redelivered])).toEqual([
      [1, true],
      [3, true],
    ]);
    await two.close();
  });

  it("hands a shard over: release, nak what is held, the next owner gets it in order", async () => {
    const namespace = freshNamespace();
    const shard = shardOfAddress("counter/a", SHARDS);
    const a = await backend(namespace);
    const ca = collector();
    await a.open("a", ca.handlers);
    await a.ownShards([shard]);
    const nc2 = await connectTo(ns.url);
    extra.push(nc2);
    const b = await backend(namespace, nc2);
    const cb = collector();
    await b.open("b", cb.handlers);
    // a sender keeps going while the shard moves
    let sent = 0;
    let sending = true;
    const sender = (async () => {
      while (sending) await a.append({ frame: frame(`h${sent++}`) });
    })();
    await waitFor("a to get some", () => ca.got.length >= 20);
    // A processes (acks) all but the last few, releases, then hands back what it holds
    for (const d of ca.got.slice(0, 10)) d.ack();
    await a.releaseShards([shard]);
    expect(a.ownedShards()).toEqual([]);
    const countAtRelease = ca.got.length;
    await sleep(50);
    expect(ca.got.length).toBe(countAtRelease); // nothing more after release resolved
    for (const d of ca.got.slice(10)) d.nak();
    await b.ownShards([shard]);
    await sleep(100);
    sending = false;
    await sender;
    await waitFor("b to get the rest", () => cb.got.length >= sent - 10, 15_000);
    const seqsB = cb.got.map((d) => d.sequence);
    // everything A did not process, then everything new: each once, in stream order
    expect(seqsB).toEqual(Array.from({ length: sent - 10 }, (_, i) => i + 11));
    expect(b.stats().resyncs).toBe(0);
    for (const d of cb.got) d.ack();
    await a.close();
    await b.close();
  });

  it("takes over from an owner that died holding messages: they come first, at once", async () => {
    const namespace = freshNamespace();
    const shard = shardOfAddress("counter/a", SHARDS);
    const nc1 = await connectTo(ns.url);
    const dying = await createNatsBackend({ nc: nc1, namespace, shardCount: SHARDS });
    const cd = collector();
    await dying.open("dying", cd.handlers);
    await dying.ownShards([shard]);
    for (let i = 0; i < 5; i++) await dying.append({ frame: frame(`d${i}`) });
    await waitFor("5 deliveries", () => cd.got.length === 5);
    cd.got[0]!.ack();
    cd.got[1]!.ack();
    await sleep(50);
    await nc1.close(); // dies holding 3..5: no nak, ack_wait is 30 s
    const b = await backend(namespace);
    const cb = collector();
    await b.open("b", cb.handlers);
    await b.ownShards([shard]);
    for (let i = 0; i < 3; i++) await b.append({ frame: frame(`n${i}`) });
    // "at once": by rewinding the consumer to its ack floor (one resync), not by waiting out
    // the dead owner's ack_wait of 30 s, which this wait would not outlast
    await waitFor("the held ones and the new ones", () => cb.got.length >= 6, 10_000);
    await sleep(100);
    expect(cb.got.map((d) => d.sequence)).toEqual([3, 4, 5, 6, 7, 8]);
    expect(b.stats().resyncs).toBe(1);
    for (const d of cb.got) d.ack();
    await b.close();
  });

  it("refuses a second open while one is open", async () => {
    const b = await backend(freshNamespace());
    await b.open("one", collector().handlers);
    await expect(b.open("two", collector().handlers)).rejects.toMatchObject({
      code: ErrorCode.INVALID_STATE,
    });
    await b.close();
  });

  it("stores snapshots with compare-and-set and isolates them from callers", async () => {
    const b = await backend(freshNamespace());
    const record = {
      state: { context: { n: 1 } },
      lastSequence: 3,
      outbox: [] as Frame[],
      sent: 0,
      updatedAt: 1,
    };
    const r1 = await b.snapshots.put("counter/a", record, 0);
    expect(r1).toBeGreaterThan(0);
    record.state.context.n = 99; // the store kept its own copy
    const got = await b.snapshots.get("counter/a");
    expect(got).toEqual({ record: { ...record, state: { context: { n: 1 } } }, revision: r1 });
    const conflict = await b.snapshots.put("counter/a", record, 0).catch((e: unknown) => e);
    expect(conflict).toBeInstanceOf(TroupeError);
    expect((conflict as TroupeError).code).toBe(ErrorCode.STORAGE_ERROR);
    expect((conflict as TroupeError).details?.conflict).toBe(true);
    const stale = await b.snapshots.put("counter/a", record, r1 + 5).catch((e: unknown) => e);
    expect((stale as TroupeError).details?.conflict).toBe(true);
    const r2 = await b.snapshots.put("counter/a", record, r1);
    expect(r2).toBeGreaterThan(r1);
    const bad = await b.snapshots
      .put("counter/b", { ...record, state: { f: () => 1 } }, 0)
      .catch((e: unknown) => e);
    expect((bad as TroupeError).code).toBe(ErrorCode.STORAGE_ERROR);
    expect((bad as TroupeError).details?.conflict).toBeUndefined();
    // keys may hold any character
    const odd = "counter/ä b.c*>/";
    await b.snapshots.put(odd, record, 0);
    expect((await b.snapshots.get(odd))?.record.state).toEqual({ context: { n: 99 } });
    await b.snapshots.delete("counter/a");
    expect(await b.snapshots.get("counter/a")).toBeUndefined();
    // gone means revision 0 again
    expect(await b.snapshots.put("counter/a", record, 0)).toBeGreaterThan(r2);
    expect(await b.snapshots.get("counter/never")).toBeUndefined();
  });

  it("keeps the quarantine registry and parked frames", async () => {
    const b = await backend(freshNamespace());
    expect(await b.quarantine.list()).toEqual([]);
    const entry = { address: "counter/q", reason: "bad", since: 5, by: "manual" as const };
    await b.quarantine.set(entry);
    await b.quarantine.set({ ...entry, address: "counter/r" });
    expect(await b.quarantine.get("counter/q")).toEqual(entry);
    expect((await b.quarantine.list()).map((e) => e.address).sort()).toEqual([
      "counter/q",
      "counter/r",
    ]);
    await b.quarantine.delete("counter/q");
    expect(await b.quarantine.get("counter/q")).toBeUndefined();
    expect(await b.parked.count()).toBe(0);
    const f = frame("p1");
    await b.parked.park({
      sequence: 7,
      to: "counter/a",
      reason: "no\r\nway",
      code: "X",
      at: 9,
      frame: f,
    });
    await b.parked.park({ sequence: 7, to: "counter/a", reason: "again", code: "X", at: 9 }); // dedup
    await b.parked.park({
      sequence: 8,
      to: "",
      reason: "junk",
      code: "DECODE_ERROR",
      at: 10,
      bytes: new Uint8Array([1, 2]),
    });
    expect(await b.parked.count()).toBe(2);
    const list = await b.parked.list(10);
    expect(list.map((p) => [p.sequence, p.to, p.reason, p.code, p.at])).toEqual([
      [7, "counter/a", "no way", "X", 9],
      [8, "", "junk", "DECODE_ERROR", 10],
    ]);
    expect(list[0]!.frame?.envelope.messageId).toBe("p1");
    expect([...(list[1]!.bytes ?? [])]).toEqual([1, 2]);
    expect((await b.parked.list(1)).map((p) => p.sequence)).toEqual([8]);
  });

  it("sends direct frames only to an open client inbox; drops garbage there", async () => {
    const b = await backend(freshNamespace());
    const c = collector();
    await b.open("me", c.handlers);
    await b.sendDirect({ frame: frame("r1", "~me") });
    await b.sendDirect({ frame: frame("r2", "~someone-else") });
    nc.publish(namespaceNames(b.namespace).clientSubject("me"), new Uint8Array([0x54, 1, 0, 9]));
    await nc.flush();
    await b.sendDirect({ frame: frame("r3", "~me") });
    // a sealed frame travels as it is, and reaches the runtime as bytes (it opens them)
    const sealed = frame("s1", "~me");
    sealed.envelope.channel = "key:main";
    const bytes = sealFrame(sealed, new Uint8Array(32).fill(7));
    await b.sendDirect({ bytes, envelope: sealed.envelope });
    await waitFor("two direct frames", () => c.direct.length === 2 && c.directSealed.length === 1);
    expect(c.direct.map((f) => f.envelope.messageId)).toEqual(["r1", "r3"]);
    expect(c.directSealed.map((m) => [...m])).toEqual([[...bytes]]);
    expect(b.stats().directDropped).toBe(1);
    await expect(b.sendDirect({ frame: frame("r4", "counter/a") })).rejects.toMatchObject({
      code: ErrorCode.INVALID_ARGUMENT,
    });
    await b.close();
  });

  it("refuses shards the namespace does not have, and addresses without a shard", async () => {
    const b = await backend(freshNamespace());
    await expect(b.ownShards([SHARDS])).rejects.toMatchObject({ code: ErrorCode.INVALID_ARGUMENT });
    await expect(b.append({ frame: frame("z", "~client") })).rejects.toMatchObject({
      code: ErrorCode.INVALID_ARGUMENT,
    });
    await expect(b.append({ frame: frame("z", "no-slash") })).rejects.toMatchObject({
      code: ErrorCode.INVALID_ARGUMENT,
    });
  });
});
