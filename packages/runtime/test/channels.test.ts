import { encodeFrame, openFrame, sealFrame } from "@troupe/wire";
import { describe, expect, it } from "vitest";
import {
  type Backend,
  bind,
  type ChannelError,
  type ChannelMessage,
  channels,
  createEmbeddedBackend,
  createRuntime,
  ErrorCode,
  send,
  status,
  TroupeError,
  unbind,
} from "../src/index.js";

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TroupeError);
    expect((e as TroupeError).code).toBe(code);
    return;
  }
  throw new Error(`expected ${code}`);
}

async function expectAsyncCode(p: Promise<unknown>, code: string): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(TroupeError);
  expect((e as TroupeError).code).toBe(code);
}

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

describe("channel API (bind / establishChannel / send / channels / status / unbind)", () => {
  it("binds callables, establishes a derived-key channel and delivers bytes in order", async () => {
    const runtime = await createRuntime();
    const got: ChannelMessage[] = [];
    const a = bind(runtime, () => {});
    const b = bind(runtime, (m) => {
      got.push(m);
    });
    expect(a.agentId).toBeInstanceOf(Uint8Array);
    expect(a.agentId.length).toBe(32);
    expect(await status(a)).toEqual({ state: "BOUND", channelCount: 0, pendingMessageCount: 0 });

    const id = await a.establishChannel(b.agentId);
    expect(await status(a)).toMatchObject({ state: "ACTIVE", channelCount: 1 });
    expect(channels(a)).toEqual([
      { channelId: id, peerId: b.agentId, establishedAt: expect.any(Number) },
    ]);
    expect(channels(b)[0]!.peerId).toEqual(a.agentId);

    const receipts = [];
    for (let i = 0; i < 100; i++) receipts.push(await send(a, id, bytes(`m${i}`)));
    expect(receipts.map((r) => r.sequence)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    await runtime.settled();
    expect(got.map((m) => text(m.bytes))).toEqual(Array.from({ length: 100 }, (_, i) => `m${i}`));
    expect(got.map((m) => m.sequence)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(got[0]!.from).toEqual(a.agentId);
    expect(got[0]!.channelId).toBe(id);
    await runtime.shutdown();
  });

  it("frames on the inbox are sealed: the payload never travels in clear", async () => {
    const runtime = await createRuntime();
    const seen: Uint8Array[] = [];
    const backend = runtime.backend;
    const append = backend.append.bind(backend);
    (backend as { append: typeof append }).append = (out) => {
      if ("bytes" in out) seen.push(out.bytes);
      return append(out);
    };
    const a = bind(runtime, () => {});
    const b = bind(runtime, () => {});
    const key = new Uint8Array(32).fill(7);
    const id = await a.establishChannel(b.agentId, key);
    await send(a, id, bytes("top secret payload"));
    await runtime.settled();
    expect(seen).toHaveLength(1);
    expect(Buffer.from(seen[0]!).includes(Buffer.from("top secret payload"))).toBe(false);
    const opened = openFrame(seen[0]!, key);
    expect(text(opened.message.payload as Uint8Array)).toBe("top secret payload");
    await runtime.shutdown();
  });

  it("rejects a replayed sequence and tampered frames, parking them with the reason", async () => {
    const runtime = await createRuntime();
    const got: string[] = [];
    const a = bind(runtime, () => {});
    const b = bind(runtime, (m) => {
      got.push(text(m.bytes));
    });
    const key = new Uint8Array(32).fill(1);
    const id = await a.establishChannel(b.agentId, key);
    await send(a, id, bytes("one"));
    await runtime.settled();
    const envelope = {
      version: 1,
      kind: "event" as const,
      messageId: "replayed-1",
      from: a.address,
      to: b.address,
      channel: id,
      sequence: 1, // already used by "one"
      timestampNs: 1n,
    };
    const replay = sealFrame(
      { envelope, message: { kind: "bytes", payload: bytes("again") } },
      key,
    );
    await runtime.backend.append({ bytes: replay, envelope });
    const tampered = sealFrame(
      {
        envelope: { ...envelope, messageId: "t-1", sequence: 9 },
        message: { kind: "bytes", payload: bytes("x") },
      },
      key,
    );
    tampered[tampered.length - 1]! ^= 1;
    await runtime.backend.append({
      bytes: tampered,
      envelope: { ...envelope, messageId: "t-1", sequence: 9 },
    });
    const plain = encodeFrame({
      envelope: { ...envelope, messageId: "p-1", sequence: 10 },
      message: { kind: "bytes", payload: bytes("y") },
    });
    await runtime.backend.append({
      bytes: plain,
      envelope: { ...envelope, messageId: "p-1", sequence: 10 },
    });
    await runtime.settled();
    expect(got).toEqual(["one"]);
    const parked = await runtime.parked();
    expect(parked.map((p) => p.code)).toEqual(["REPLAY_DETECTED", "CRYPTO_ERROR", "CRYPTO_ERROR"]);
    expect(parked[2]!.reason).toContain("not sealed");
    await runtime.shutdown();
  });

  it("gives typed errors: CHANNEL_NOT_FOUND, CRYPTO_ERROR for a bad key, INVALID_STATE after unbind", async () => {
    const runtime = await createRuntime();
    const a = bind(runtime, () => {});
    const b = bind(runtime, () => {});
    await expectAsyncCode(send(a, "nope", bytes("x")), ErrorCode.CHANNEL_NOT_FOUND);
    await expectAsyncCode(
      a.establishChannel(b.agentId, new Uint8Array(16)),
      ErrorCode.CRYPTO_ERROR,
    );
    await expectAsyncCode(a.establishChannel(new Uint8Array(32)), ErrorCode.INVALID_ARGUMENT);
    const id = await a.establishChannel(b.agentId);
    const c = bind(runtime, () => {});
    await expectAsyncCode(send(c, id, bytes("not mine")), ErrorCode.CHANNEL_NOT_FOUND);
    await expectAsyncCode(send(a, id, "text" as never), ErrorCode.INVALID_ARGUMENT);
    await unbind(a);
    expect((await status(a)).state).toBe("UNBOUND");
    expect(channels(b)).toEqual([]);
    await expectAsyncCode(send(a, id, bytes("x")), ErrorCode.INVALID_STATE);
    await expectAsyncCode(a.establishChannel(b.agentId), ErrorCode.INVALID_STATE);
    await expectAsyncCode(unbind(a), ErrorCode.INVALID_STATE);
    expectCode(() => bind({} as never, () => {}), ErrorCode.INVALID_ARGUMENT);
    await runtime.shutdown();
  });

  it("unbind flushes pending messages first", async () => {
    const runtime = await createRuntime();
    const got: string[] = [];
    const a = bind(runtime, () => {});
    const b = bind(runtime, async (m) => {
      await new Promise((r) => setTimeout(r, 1));
      got.push(text(m.bytes));
    });
    const id = await a.establishChannel(b.agentId);
    for (let i = 0; i < 10; i++) await send(a, id, bytes(String(i)));
    await new Promise((r) => setImmediate(r));
    await unbind(b);
    expect(got).toEqual(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    await runtime.shutdown();
  });

  it("a failing callable is retried, then quarantined (QUARANTINE_TRIGGERED path), and release delivers in order", async () => {
    const runtime = await createRuntime({ retryDelayMs: 1, maxRetries: 2 });
    let failing = true;
    const got: string[] = [];
    const a = bind(runtime, () => {});
    const b = bind(runtime, (m) => {
      const s = text(m.bytes);
      if (s === "bad" && failing) throw new Error("cannot take it");
      got.push(s);
    });
    const id = await a.establishChannel(b.agentId);
    for (const s of ["ok1", "bad", "ok2"]) await send(a, id, bytes(s));
    await runtime.settled();
    expect(await status(b)).toMatchObject({ state: "QUARANTINED", pendingMessageCount: 2 });
    await expectAsyncCode(send(b, id, bytes("from quarantined")), ErrorCode.QUARANTINED);
    failing = false;
    expect(await runtime.release(b.address)).toBe(2);
    await runtime.settled();
    expect(got).toEqual(["ok1", "bad", "ok2"]);
    await runtime.shutdown();
  });
});

describe("channel API: failures reported to the sender, transport and storage errors, concurrency", () => {
  it("a peer quarantined by a message reports QUARANTINE_TRIGGERED to its sender, which stays ACTIVE", async () => {
    const runtime = await createRuntime({ retryDelayMs: 1, maxRetries: 2 });
    const failures: ChannelError[] = [];
    const a = bind(runtime, () => {}, { onError: (f) => void failures.push(f) });
    const b = bind(runtime, (m) => {
      if (text(m.bytes) === "bad") throw new Error("cannot take it");
    });
    const id = await a.establishChannel(b.agentId);
    const receipt = await send(a, id, bytes("bad"));
    await runtime.settled();
    expect(await status(b)).toMatchObject({ state: "QUARANTINED", pendingMessageCount: 1 });
    expect(failures).toHaveLength(1);
    expect(failures[0]!.error).toBeInstanceOf(TroupeError);
    expect(failures[0]!.error.code).toBe(ErrorCode.QUARANTINE_TRIGGERED);
    expect(failures[0]!.messageId).toBe(receipt.messageId);
    expect(failures[0]!.from).toEqual(b.agentId);
    // the notice is not a failure of the sender's own: it is not quarantined with its peer
    expect(await status(a)).toMatchObject({ state: "ACTIVE", pendingMessageCount: 0 });
    expect((await runtime.quarantined()).map((q) => q.address)).toEqual([b.address]);
    await runtime.shutdown();
  });

  it("without onError the notice is only logged: the sender keeps working", async () => {
    const runtime = await createRuntime({ retryDelayMs: 1, maxRetries: 0 });
    const got: string[] = [];
    const a = bind(runtime, (m) => {
      got.push(text(m.bytes));
    });
    const b = bind(runtime, () => {
      throw new Error("always fails");
    });
    const id = await a.establishChannel(b.agentId);
    await send(a, id, bytes("x"));
    await runtime.settled();
    expect((await status(b)).state).toBe("QUARANTINED");
    expect(await status(a)).toMatchObject({ state: "ACTIVE", pendingMessageCount: 0 });
    expect(runtime.stats().quarantines).toBe(1);
    expect(got).toEqual([]);
    await runtime.shutdown();
  });

  it("a sender is told when its frame is refused as a replay (REPLAY_DETECTED)", async () => {
    const runtime = await createRuntime();
    const codes: string[] = [];
    const a = bind(runtime, () => {}, { onError: (f) => void codes.push(f.error.code) });
    const b = bind(runtime, () => {});
    const key = new Uint8Array(32).fill(3);
    const id = await a.establishChannel(b.agentId, key);
    await send(a, id, bytes("one"));
    await runtime.settled();
    const envelope = {
      version: 1,
      kind: "event" as const,
      messageId: "again-1",
      from: a.address,
      to: b.address,
      channel: id,
      sequence: 1,
      timestampNs: 1n,
    };
    const replay = sealFrame({ envelope, message: { kind: "bytes", payload: bytes("one") } }, key);
    await runtime.backend.append({ bytes: replay, envelope });
    await runtime.settled();
    expect(codes).toEqual([ErrorCode.REPLAY_DETECTED]);
    expect((await status(a)).state).toBe("ACTIVE");
    expect(() => bind(runtime, () => {}, { onError: 1 as never })).toThrow(TroupeError);
    await runtime.shutdown();
  });

  it("plain frames addressed to an endpoint are parked (CHANNEL_NOT_FOUND), not held against it", async () => {
    const runtime = await createRuntime({ retryDelayMs: 1, maxRetries: 0 });
    const got: string[] = [];
    const a = bind(runtime, () => {});
    const b = bind(runtime, (m) => {
      got.push(text(m.bytes));
    });
    const id = await a.establishChannel(b.agentId);
    const frame = {
      envelope: {
        version: 1,
        kind: "event" as const,
        messageId: "plain-1",
        from: "~someone",
        to: b.address,
        sequence: 1,
        timestampNs: 1n,
      },
      message: { kind: "data" as const, payload: { type: "hello" } },
    };
    await runtime.backend.append({ frame });
    const second = { ...frame, envelope: { ...frame.envelope, messageId: "plain-2" } };
    await runtime.backend.append({ bytes: encodeFrame(second), envelope: second.envelope });
    await send(a, id, bytes("still works"));
    await runtime.settled();
    expect((await runtime.parked()).map((p) => p.code)).toEqual([
      ErrorCode.CHANNEL_NOT_FOUND,
      ErrorCode.CHANNEL_NOT_FOUND,
    ]);
    expect((await status(b)).state).toBe("ACTIVE");
    expect(got).toEqual(["still works"]);
    await runtime.shutdown();
  });

  it("send gives TRANSPORT_ERROR (retryable) when the inbox cannot be reached, and passes STORAGE_ERROR on", async () => {
    const inner = createEmbeddedBackend();
    let mode: "ok" | "transport" | "storage" = "ok";
    const flaky: Backend = Object.create(inner, {
      append: {
        value: (out: Parameters<Backend["append"]>[0]) => {
          if (mode === "transport") return Promise.reject(new Error("link down"));
          if (mode === "storage")
            return Promise.reject(new TroupeError(ErrorCode.STORAGE_ERROR, "inbox store is full"));
          return inner.append(out);
        },
      },
    });
    const runtime = await createRuntime({ backend: flaky });
    const got: string[] = [];
    const a = bind(runtime, () => {});
    const b = bind(runtime, (m) => {
      got.push(text(m.bytes));
    });
    const id = await a.establishChannel(b.agentId);
    mode = "transport";
    const e = await send(a, id, bytes("lost")).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(TroupeError);
    expect((e as TroupeError).code).toBe(ErrorCode.TRANSPORT_ERROR);
    expect((e as TroupeError).retryable).toBe(true);
    mode = "storage";
    await expectAsyncCode(send(a, id, bytes("lost too")), ErrorCode.STORAGE_ERROR);
    mode = "ok";
    await send(a, id, bytes("arrives"));
    await runtime.settled();
    expect(got).toEqual(["arrives"]);
    await runtime.shutdown();
  });

  it("one message at a time per endpoint, many endpoints at once", async () => {
    const runtime = await createRuntime();
    let inFlight = 0;
    let maxInFlight = 0;
    const perEndpoint = [0, 0, 0, 0];
    const maxPerEndpoint = [0, 0, 0, 0];
    const got: string[][] = [[], [], [], []];
    const a = bind(runtime, () => {});
    const receivers = [0, 1, 2, 3].map((i) =>
      bind(runtime, async (m) => {
        inFlight++;
        perEndpoint[i]!++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        maxPerEndpoint[i] = Math.max(maxPerEndpoint[i]!, perEndpoint[i]!);
        await new Promise((r) => setTimeout(r, 1));
        got[i]!.push(text(m.bytes));
        perEndpoint[i]!--;
        inFlight--;
      }),
    );
    const ids = await Promise.all(receivers.map((r) => a.establishChannel(r.agentId)));
    for (let n = 0; n < 20; n++) {
      for (const id of ids) await send(a, id, bytes(String(n)));
    }
    await runtime.settled();
    const expected = Array.from({ length: 20 }, (_, n) => String(n));
    expect(got).toEqual([expected, expected, expected, expected]);
    expect(maxPerEndpoint).toEqual([1, 1, 1, 1]);
    expect(maxInFlight).toBeGreaterThan(1);
    await runtime.shutdown();
  });
});
