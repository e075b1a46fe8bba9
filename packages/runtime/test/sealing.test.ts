/** Agent traffic sealed end to end with named channel keys (RuntimeConfig.sealing). */
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type Envelope,
  encodeFrame,
  type Frame,
  keyChannel,
  newMessageId,
  openFrame,
  peekEnvelope,
  sealFrame,
} from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { setup } from "xstate";
import {
  type Backend,
  bind,
  createEmbeddedBackend,
  createManualClock,
  createRuntime,
  defineAgent,
  ErrorCode,
  type Outgoing,
  parseChannelKey,
  readChannelKeys,
  readSealing,
  type SealingConfig,
  send,
  TroupeError,
} from "../src/index.js";
import { asker, counter } from "./fixtures.js";

const OLD = new Uint8Array(32).fill(1);
const NEW = new Uint8Array(32).fill(2);
const OTHER = new Uint8Array(32).fill(3);
const MARKER = "plaintext-marker-7f3a";

/** An embedded backend that records what the runtime hands it (appends and direct sends). */
function recording(): { backend: Backend; appended: Outgoing[]; direct: Outgoing[] } {
  const inner = createEmbeddedBackend();
  const appended: Outgoing[] = [];
  const direct: Outgoing[] = [];
  const backend: Backend = Object.create(inner, {
    append: {
      value: (out: Outgoing) => {
        appended.push(out);
        return inner.append(out);
      },
    },
    sendDirect: {
      value: (out: Outgoing) => {
        direct.push(out);
        return inner.sendDirect(out);
      },
    },
  });
  return { backend, appended, direct };
}

let seq = 0;
function envelope(to: string, overrides: Partial<Envelope> = {}): Envelope {
  return {
    version: 1,
    kind: "event",
    messageId: newMessageId(),
    from: "~outsider",
    to,
    sequence: ++seq,
    timestampNs: 1n,
    ...overrides,
  };
}

function sealedWith(name: string, key: Uint8Array, env: Envelope, payload: unknown) {
  const e = { ...env, channel: keyChannel(name) };
  return {
    bytes: sealFrame({ envelope: e, message: { kind: "data", payload } }, key),
    envelope: e,
  };
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  return e instanceof TroupeError ? e.code : `not a TroupeError: ${String(e)}`;
}

const text = (b: Uint8Array) => Buffer.from(b).toString("latin1");

describe("sealing configuration", () => {
  it("refuses keys that are not 32 bytes, several keys without sealWith, an unknown sealWith (CONFIG_ERROR)", async () => {
    const bad: SealingConfig[] = [
      { keys: { a: new Uint8Array(16) } },
      { keys: { a: "x".repeat(32) as never } },
      { keys: {} },
      { keys: { a: OLD, b: NEW } },
      { keys: { a: OLD }, sealWith: "b" },
      { keys: { "..data": OLD } },
      { keys: null as never },
    ];
    for (const sealing of bad) {
      const err = await createRuntime({ sealing }).catch((e: unknown) => e);
      expect(err, JSON.stringify(Object.keys(sealing?.keys ?? {}))).toBeInstanceOf(TroupeError);
      expect((err as TroupeError).code).toBe(ErrorCode.CONFIG_ERROR);
    }
    const several = await createRuntime({ sealing: { keys: { a: OLD, b: NEW } } }).catch(
      (e: unknown) => e,
    );
    expect((several as TroupeError).message).toContain("sealWith");
    // one key: it is the one frames are sealed with
    const ok = await createRuntime({ sealing: { keys: { only: OLD } } });
    await ok.shutdown();
  });

  it("refuses a TROUPE_AEAD it cannot honour (CONFIG_ERROR), and takes one it can", async () => {
    const before = process.env.TROUPE_AEAD;
    try {
      process.env.TROUPE_AEAD = "openssl";
      const err = await createRuntime({ sealing: { keys: { only: OLD } } }).catch(
        (e: unknown) => e,
      );
      expect((err as TroupeError).code).toBe(ErrorCode.CONFIG_ERROR);
      expect((err as TroupeError).message).toContain(
        "TROUPE_AEAD must be libsodium, node or noble",
      );
      process.env.TROUPE_AEAD = "noble";
      const ok = await createRuntime({ sealing: { keys: { only: OLD } } });
      await ok.shutdown();
    } finally {
      if (before === undefined) delete process.env.TROUPE_AEAD;
      else process.env.TROUPE_AEAD = before;
    }
  });
});

describe("sealed agent traffic (embedded backend)", () => {
  it("seals sends, requests and replies; the agent gets the event and the request its reply", async () => {
    const { backend, appended, direct } = recording();
    const runtime = await createRuntime({
      agents: [counter],
      backend,
      sealing: { keys: { main: OLD } },
    });
    const ref = runtime.ref(counter, "a");
    await ref.send({ type: "inc", by: 2, tag: MARKER });
    expect(await ref.request({ type: "get" }, { timeoutMs: 5000 })).toEqual({
      type: "value",
      value: 2,
    });
    expect(appended).toHaveLength(2);
    for (const out of appended) {
      expect("bytes" in out).toBe(true);
      const { bytes, envelope: env } = out as { bytes: Uint8Array; envelope: Envelope };
      expect(env.channel).toBe("key:main");
      expect(peekEnvelope(bytes)).toMatchObject({
        sealed: true,
        envelope: { channel: "key:main" },
      });
      expect(text(bytes)).not.toContain(MARKER);
    }
    // the event is in there, under the key
    const first = appended[0] as { bytes: Uint8Array };
    expect(openFrame(first.bytes, OLD).message.payload).toEqual({
      type: "inc",
      by: 2,
      tag: MARKER,
    });
    // the reply to the client went sealed too
    expect(direct).toHaveLength(1);
    const reply = direct[0] as { bytes: Uint8Array; envelope: Envelope };
    expect(reply.envelope).toMatchObject({ kind: "reply", channel: "key:main" });
    expect(openFrame(reply.bytes, OLD).message.payload).toEqual({ type: "value", value: 2 });
    expect(await runtime.parked()).toEqual([]);
    expect(runtime.stats().directRefused).toBe(0);
    await runtime.shutdown();
  });

  it("seals agent-to-agent sends and replies between agents", async () => {
    const { backend, appended } = recording();
    const runtime = await createRuntime({
      agents: [counter, asker],
      backend,
      sealing: { keys: { main: OLD } },
    });
    await runtime.ref(counter, "c").send({ type: "inc", by: 5 });
    const answer = await runtime
      .ref(asker, "q")
      .request({ type: "ask", target: "c" }, { timeoutMs: 5000 });
    expect(answer).toEqual({ type: "answer", value: 5 });
    const fromAgents = appended.filter((o) => !("frame" in o) && !o.envelope.from.startsWith("~"));
    expect(fromAgents.map((o) => ("frame" in o ? "" : o.envelope.from)).sort()).toEqual([
      "asker/q",
      "counter/c",
    ]);
    expect(appended.every((o) => "bytes" in o && o.envelope.channel === "key:main")).toBe(true);
    await runtime.shutdown();
  });

  it("refuses plain agent frames with CRYPTO_ERROR (parked), and counts them against the sender", async () => {
    const runtime = await createRuntime({
      agents: [counter],
      sealing: { keys: { main: OLD } },
      senderFailureLimit: 2,
    });
    const frame: Frame = {
      envelope: envelope("counter/p", { from: "~plain" }),
      message: { kind: "data", payload: { type: "inc", by: 1 } },
    };
    await runtime.backend.append({ frame });
    const second = { ...frame, envelope: { ...frame.envelope, messageId: newMessageId() } };
    await runtime.backend.append({ bytes: encodeFrame(second), envelope: second.envelope });
    await runtime.settled();
    const parked = await runtime.parked();
    expect(parked.map((p) => p.code)).toEqual([ErrorCode.CRYPTO_ERROR, ErrorCode.CRYPTO_ERROR]);
    expect(parked[0]!.reason).toContain("not sealed");
    expect((await runtime.quarantined()).map((q) => [q.address, q.refuseFrames])).toEqual([
      ["~plain", true],
    ]);
    // the agent's state did not change
    expect(await runtime.ref(counter, "p").request({ type: "get" })).toEqual({
      type: "value",
      value: 0,
    });
    await runtime.shutdown();
  });

  it("refuses a frame sealed with a key it does not have, and one that fails authentication", async () => {
    const runtime = await createRuntime({ agents: [counter], sealing: { keys: { main: OLD } } });
    const unknown = sealedWith("other", OTHER, envelope("counter/u"), { type: "inc", by: 1 });
    await runtime.backend.append(unknown);
    const wrongKey = sealedWith("main", OTHER, envelope("counter/u"), { type: "inc", by: 1 });
    await runtime.backend.append(wrongKey);
    const tampered = sealedWith("main", OLD, envelope("counter/u"), { type: "inc", by: 1 });
    tampered.bytes[tampered.bytes.length - 20]! ^= 1;
    await runtime.backend.append(tampered);
    await runtime.settled();
    const parked = await runtime.parked();
    expect(parked.map((p) => p.code)).toEqual([
      ErrorCode.CRYPTO_ERROR,
      ErrorCode.CRYPTO_ERROR,
      ErrorCode.CRYPTO_ERROR,
    ]);
    expect(parked[0]!.reason).toContain(
      `sealed with key "other", which this runtime does not have`,
    );
    expect(parked[1]!.reason).toContain("failed authentication");
    expect(parked[2]!.reason).toContain("failed authentication");
    // parked as they came: sealed
    expect(parked.every((p) => p.frame === undefined && p.bytes !== undefined)).toBe(true);
    expect(await runtime.ref(counter, "u").request({ type: "get" })).toEqual({
      type: "value",
      value: 0,
    });
    await runtime.shutdown();
  });

  it("rotation: with keys {old, new} and sealWith new it opens frames sealed with old and seals with new", async () => {
    const { backend, direct } = recording();
    const runtime = await createRuntime({
      agents: [counter],
      backend,
      sealing: { keys: { old: OLD, new: NEW }, sealWith: "new" },
    });
    await runtime.backend.append(
      sealedWith("old", OLD, envelope("counter/r"), { type: "inc", by: 3 }),
    );
    await runtime.backend.append(
      sealedWith("new", NEW, envelope("counter/r"), { type: "inc", by: 4 }),
    );
    expect(await runtime.ref(counter, "r").request({ type: "get" })).toEqual({
      type: "value",
      value: 7,
    });
    expect(direct.map((o) => ("frame" in o ? undefined : o.envelope.channel))).toEqual(["key:new"]);
    await runtime.shutdown();

    // after the rotation is finished (old removed), a straggler sealed with old is refused
    const after = await createRuntime({
      agents: [counter],
      backend: createEmbeddedBackend(),
      sealing: { keys: { new: NEW } },
    });
    await after.backend.append(
      sealedWith("old", OLD, envelope("counter/r"), { type: "inc", by: 1 }),
    );
    await after.settled();
    expect((await after.parked()).map((p) => p.code)).toEqual([ErrorCode.CRYPTO_ERROR]);
    await after.shutdown();
  });

  it("a frame refused after it was opened (validation) is parked sealed, as it came", async () => {
    const strict = defineAgent({
      type: "strict",
      machine: setup({ types: { events: {} as { type: "ok" } } }).createMachine({ on: { ok: {} } }),
      strictEvents: true,
    });
    const runtime = await createRuntime({ agents: [strict], sealing: { keys: { main: OLD } } });
    await runtime.backend.append(
      sealedWith("main", OLD, envelope("strict/s"), { type: "nope", secret: MARKER }),
    );
    await runtime.settled();
    const [p] = await runtime.parked();
    expect(p).toMatchObject({ code: ErrorCode.VALIDATION_ERROR });
    expect(p!.frame).toBeUndefined();
    expect(text(p!.bytes!)).not.toContain(MARKER);
    await runtime.shutdown();
  });

  it("refuses a plain reply to a pending request; the request times out saying why", async () => {
    const clock = createManualClock();
    const { backend, appended } = recording();
    const runtime = await createRuntime({
      agents: [counter],
      backend,
      clock,
      sealing: { keys: { main: OLD } },
    });
    // `inc` as a request: the counter never replies to it
    const pending = runtime
      .ref(counter, "t")
      .request({ type: "inc", by: 1 }, { timeoutMs: 1000 })
      .catch((e: unknown) => e);
    await runtime.settled();
    const request = appended[0] as { envelope: Envelope };
    const forged: Frame = {
      envelope: envelope(`~${runtime.clientId}`, {
        kind: "reply",
        from: "counter/t",
        correlationId: request.envelope.messageId,
      }),
      message: { kind: "data", payload: { type: "forged" } },
    };
    await runtime.backend.sendDirect({ frame: forged });
    const wrong = sealedWith("main", OTHER, { ...forged.envelope, messageId: newMessageId() }, {});
    await runtime.backend.sendDirect(wrong);
    expect(runtime.stats().directRefused).toBe(2);
    clock.advance(1000);
    const err = (await pending) as TroupeError;
    expect(err.code).toBe(ErrorCode.TIMEOUT);
    expect(err.message).toContain("a reply came and was refused: CRYPTO_ERROR");
    await runtime.shutdown();
  });

  it("a runtime without keys fails a request at once when its reply comes sealed", async () => {
    const { backend, appended } = recording();
    const runtime = await createRuntime({ agents: [counter], backend });
    const pending = runtime
      .ref(counter, "n")
      .request({ type: "inc", by: 1 }, { timeoutMs: 60_000 })
      .catch((e: unknown) => e);
    await runtime.settled();
    const request = appended[0] as { frame: Frame };
    const reply = sealedWith(
      "main",
      OLD,
      envelope(`~${runtime.clientId}`, {
        kind: "error",
        from: "counter/n",
        correlationId: request.frame.envelope.messageId,
      }),
      {},
    );
    await runtime.backend.sendDirect(reply);
    const err = (await pending) as TroupeError;
    expect(err.code).toBe(ErrorCode.CRYPTO_ERROR);
    expect(err.message).toContain(`sealed with key "main", and this runtime has no channel keys`);
    expect(runtime.stats().directRefused).toBe(1);
    await runtime.shutdown();
  });

  it("without sealing, frames and their handling stay as they were (a key:<name> frame is CHANNEL_NOT_FOUND)", async () => {
    const { backend, appended } = recording();
    const runtime = await createRuntime({ agents: [counter], backend });
    await runtime.ref(counter, "x").send({ type: "inc", by: 1 });
    expect("frame" in appended[0]!).toBe(true);
    await runtime.backend.append(
      sealedWith("main", OLD, envelope("counter/x"), { type: "inc", by: 1 }),
    );
    await runtime.settled();
    expect((await runtime.parked()).map((p) => p.code)).toEqual([ErrorCode.CHANNEL_NOT_FOUND]);
    expect(await runtime.ref(counter, "x").request({ type: "get" })).toEqual({
      type: "value",
      value: 1,
    });
    await runtime.shutdown();
  });

  it("the channel API works unchanged beside sealed agent traffic", async () => {
    const runtime = await createRuntime({ agents: [counter], sealing: { keys: { main: OLD } } });
    const got: string[] = [];
    const a = bind(runtime, () => {});
    const b = bind(runtime, (m) => {
      got.push(Buffer.from(m.bytes).toString());
    });
    const id = await a.establishChannel(b.agentId);
    await send(a, id, new TextEncoder().encode("hello"));
    await runtime.ref(counter, "c").send({ type: "inc", by: 1 });
    await runtime.settled();
    expect(got).toEqual(["hello"]);
    expect(await runtime.parked()).toEqual([]);
    await runtime.shutdown();
  });
});

describe("readChannelKeys", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "troupe-keys-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reads raw, hex and base64 keys; skips dot entries and directories (a mounted Secret)", async () => {
    const keys = join(dir, "secret");
    const data = join(keys, "..2024_01_01");
    await mkdir(data, { recursive: true });
    const raw = new Uint8Array(32).map((_, i) => i);
    await writeFile(join(data, "raw"), raw);
    await writeFile(join(data, "hex"), `${Buffer.from(NEW).toString("hex")}\n`);
    await writeFile(join(data, "b64"), `  ${Buffer.from(OLD).toString("base64")}\n`);
    await writeFile(join(data, "b64url"), Buffer.from(OTHER).toString("base64url"));
    await symlink("..2024_01_01", join(keys, "..data"));
    for (const name of ["raw", "hex", "b64", "b64url"]) {
      await symlink(join("..data", name), join(keys, name));
    }
    await mkdir(join(keys, "nested"));
    const read = await readChannelKeys(keys);
    expect(Object.keys(read).sort()).toEqual(["b64", "b64url", "hex", "raw"]);
    expect(read.raw).toEqual(raw);
    expect(read.hex).toEqual(NEW);
    expect(read.b64).toEqual(OLD);
    expect(read.b64url).toEqual(OTHER);
    // several keys: the one to seal with must be named, and be one of them
    expect(await codeOf(readSealing(keys))).toBe(ErrorCode.CONFIG_ERROR);
    expect(await codeOf(readSealing(keys, "nope"))).toBe(ErrorCode.CONFIG_ERROR);
    expect((await readSealing(keys, "hex")).sealWith).toBe("hex");
  });

  it("names the file that is not a key; refuses a missing or empty directory (CONFIG_ERROR)", async () => {
    const bad = join(dir, "bad");
    await mkdir(bad);
    await writeFile(join(bad, "short"), "abcd");
    const err = (await readChannelKeys(bad).catch((e: unknown) => e)) as TroupeError;
    expect(err.code).toBe(ErrorCode.CONFIG_ERROR);
    expect(err.message).toContain(join(bad, "short"));
    const empty = join(dir, "empty");
    await mkdir(empty);
    await writeFile(join(empty, ".hidden"), OLD);
    expect(await codeOf(readChannelKeys(empty))).toBe(ErrorCode.CONFIG_ERROR);
    expect(await codeOf(readChannelKeys(join(dir, "missing")))).toBe(ErrorCode.CONFIG_ERROR);
    expect(() => parseChannelKey(new Uint8Array(31), "k")).toThrow(/k is not a key/);
    expect(() => parseChannelKey(Buffer.from("zz".repeat(32)), "k")).toThrow(TroupeError);
  });
});
