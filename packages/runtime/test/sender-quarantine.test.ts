/** Automatic quarantine of senders of repeated undecodable, unopenable or replayed frames. */
import {
  decodeFrame,
  type Envelope,
  encodeFrame,
  newMessageId,
  peekEnvelope,
  sealFrame,
} from "@troupe/wire";
import { describe, expect, it } from "vitest";
import {
  bind,
  createManualClock,
  createRuntime,
  ErrorCode,
  type Runtime,
  status,
  TroupeError,
} from "../src/index.js";
import { counter } from "./fixtures.js";

let seq = 0;

function envelope(from: string, to: string): Envelope {
  return {
    version: 1,
    kind: "event",
    messageId: newMessageId(),
    from,
    to,
    sequence: ++seq,
    timestampNs: 1n,
  };
}

/** A sealed frame whose tag does not verify (flipped last byte): CRYPTO_ERROR at the receiver. */
async function sendTampered(runtime: Runtime, from: string, to: string): Promise<void> {
  const env = envelope(from, to);
  const bytes = sealFrame(
    { envelope: env, message: { kind: "data", payload: { type: "inc", by: 1 } } },
    new Uint8Array(32).fill(9),
  );
  bytes[bytes.length - 1]! ^= 1;
  await runtime.backend.append({ bytes, envelope: env });
}

/** An unsealed frame whose envelope reads but whose body does not decode: DECODE_ERROR. */
async function sendGarbage(runtime: Runtime, from: string, to: string): Promise<void> {
  const env = envelope(from, to);
  const whole = encodeFrame({
    envelope: env,
    message: { kind: "data", payload: { type: "inc", by: 1, pad: "x".repeat(40) } },
  });
  const bytes = whole.subarray(0, whole.length - 20);
  expect(peekEnvelope(bytes).envelope.from).toBe(from);
  expect(() => decodeFrame(bytes)).toThrow(TroupeError);
  await runtime.backend.append({ bytes, envelope: env });
}

/** A valid plain event frame with any `from`. */
async function sendValid(runtime: Runtime, from: string, to: string, by = 1): Promise<void> {
  const env = envelope(from, to);
  await runtime.backend.append({
    frame: { envelope: env, message: { kind: "data", payload: { type: "inc", by } } },
  });
}

async function countOf(runtime: Runtime, key: string): Promise<number> {
  return ((await runtime.ref("counter", key).request({ type: "get" })) as { value: number }).value;
}

describe("sender quarantine", () => {
  it("quarantines an endpoint after 5 tampered sealed frames, refuses its later frames, release lets it through", async () => {
    const runtime = await createRuntime({ agents: [counter] });
    const errors: string[] = [];
    const mallory = bind(runtime, () => {}, { onError: (e) => void errors.push(e.error.code) });
    const to = "counter/victim";

    for (let i = 0; i < 4; i++) await sendTampered(runtime, mallory.address, to);
    await runtime.settled();
    expect(await runtime.quarantined()).toEqual([]);
    expect(await status(mallory)).toMatchObject({ state: "ACTIVE" });

    await sendTampered(runtime, mallory.address, to);
    await runtime.settled();
    const [entry, ...others] = await runtime.quarantined();
    expect(others).toEqual([]);
    expect(entry).toMatchObject({ address: mallory.address, by: "auto", refuseFrames: true });
    expect(entry!.reason).toContain("5 frames within 60000 ms");
    expect(entry!.reason).toContain("5 CRYPTO_ERROR");
    expect(entry!.reason).toMatch(/last: CRYPTO_ERROR: /);
    // the sender is bound here: its host is quarantined as by hand (its inbound is held)
    expect((await status(mallory)).state).toBe("QUARANTINED");
    expect(runtime.stats().quarantines).toBe(1);

    // even a valid frame from it is refused now, and parked with the reason
    await sendValid(runtime, mallory.address, to, 100);
    // other senders to the same agent are served
    await runtime.ref("counter", "victim").send({ type: "inc", by: 2 });
    await sendValid(runtime, "~someone-else", to, 3);
    await runtime.settled();
    expect(await countOf(runtime, "victim")).toBe(5);
    const parked = await runtime.parked();
    expect(parked.map((p) => p.code)).toEqual([
      ...Array(5).fill(ErrorCode.CRYPTO_ERROR),
      ErrorCode.QUARANTINED,
    ]);
    expect(parked[5]!.reason).toContain(`sender ${mallory.address} is quarantined`);
    expect(parked[5]!.reason).toContain("5 CRYPTO_ERROR");

    // the notices of refusals are held for it while it is quarantined, delivered on release
    expect(await runtime.release(mallory.address)).toBeGreaterThan(0);
    await runtime.settled();
    expect(await runtime.quarantined()).toEqual([]);
    expect((await status(mallory)).state).toBe("ACTIVE");
    expect(errors.filter((c) => c === ErrorCode.QUARANTINED)).toHaveLength(1);
    await sendValid(runtime, mallory.address, to, 1000);
    await runtime.settled();
    expect(await countOf(runtime, "victim")).toBe(1005);
    // what was parked while it was quarantined stays parked: audit records
    expect((await runtime.parked()).length).toBe(6);
    await runtime.shutdown();
  });

  it("quarantines a client after garbage frames with a readable envelope; release lifts it", async () => {
    const runtime = await createRuntime({ agents: [counter], senderFailureLimit: 3 });
    const from = "~mallory";
    for (let i = 0; i < 3; i++) await sendGarbage(runtime, from, "counter/g");
    await runtime.settled();
    const entries = await runtime.quarantined();
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ address: from, by: "auto", refuseFrames: true });
    expect(entries[0]!.reason).toContain("3 DECODE_ERROR");

    await sendValid(runtime, from, "counter/g", 10);
    await sendValid(runtime, "~alice", "counter/g", 1);
    await runtime.settled();
    expect(await countOf(runtime, "g")).toBe(1);
    expect((await runtime.parked()).at(-1)).toMatchObject({
      code: ErrorCode.QUARANTINED,
      to: "counter/g",
    });

    expect(await runtime.release(from)).toBe(0);
    expect(await runtime.quarantined()).toEqual([]);
    await sendValid(runtime, from, "counter/g", 10);
    await runtime.settled();
    expect(await countOf(runtime, "g")).toBe(11);
    await expect(runtime.release(from)).rejects.toMatchObject({ code: ErrorCode.INVALID_STATE });
    await runtime.shutdown();
  });

  it("counts failures within the window only: spread wider, they do not quarantine", async () => {
    const clock = createManualClock();
    const runtime = await createRuntime({
      agents: [counter],
      clock,
      senderFailureLimit: 5,
      senderFailureWindowMs: 60_000,
    });
    const from = "~slow";
    for (let i = 0; i < 4; i++) await sendGarbage(runtime, from, "counter/w");
    await runtime.settled();
    await clock.advance(60_001);
    for (let i = 0; i < 4; i++) await sendTampered(runtime, from, "counter/w");
    await runtime.settled();
    // 8 failures, but never 5 within 60 s
    expect(await runtime.quarantined()).toEqual([]);
    await clock.advance(30_000);
    await sendGarbage(runtime, from, "counter/w");
    await runtime.settled();
    const entries = await runtime.quarantined();
    expect(entries).toHaveLength(1);
    expect(entries[0]!.reason).toContain("(4 CRYPTO_ERROR, 1 DECODE_ERROR); last: DECODE_ERROR: ");
    expect(entries[0]!.since).toBe(clock.now());
    await runtime.shutdown();
  });

  it("a quarantined agent sender's own host is quarantined; other agents keep working", async () => {
    const runtime = await createRuntime({ agents: [counter], senderFailureLimit: 2 });
    const bad = runtime.ref("counter", "bad");
    await bad.send({ type: "inc", by: 1 });
    await runtime.settled();
    expect((await bad.status()).state).toBe("ACTIVE");
    for (let i = 0; i < 2; i++) await sendGarbage(runtime, bad.address, "counter/target");
    await runtime.settled();
    expect((await bad.status()).state).toBe("QUARANTINED");
    expect(await runtime.quarantined()).toEqual([
      expect.objectContaining({ address: "counter/bad", by: "auto", refuseFrames: true }),
    ]);
    // its own inbound is held, not handled
    await bad.send({ type: "inc", by: 1 });
    await runtime.settled();
    expect((await bad.status()).pendingMessageCount).toBeGreaterThan(0);
    await runtime.ref("counter", "target").send({ type: "inc", by: 7 });
    await runtime.settled();
    expect(await countOf(runtime, "target")).toBe(7);
    await runtime.release(bad);
    await runtime.settled();
    expect(await countOf(runtime, "bad")).toBe(2);
    await runtime.shutdown();
  });

  it("senderFailureLimit 0 turns it off; handler-failure quarantines do not refuse frames", async () => {
    const runtime = await createRuntime({ agents: [counter], senderFailureLimit: 0 });
    for (let i = 0; i < 10; i++) await sendGarbage(runtime, "~noisy", "counter/z");
    await runtime.settled();
    expect(await runtime.quarantined()).toEqual([]);
    await sendValid(runtime, "~noisy", "counter/z", 4);
    await runtime.settled();
    expect(await countOf(runtime, "z")).toBe(4);
    // a manual quarantine of an agent holds its inbound; what it sends is not refused
    await runtime.quarantine("counter/z", "by hand");
    expect((await runtime.quarantined())[0]!.refuseFrames).toBeUndefined();
    await runtime.shutdown();
  });

  it("validates its configuration (CONFIG_ERROR)", async () => {
    const bad = [
      { senderFailureLimit: -1 },
      { senderFailureLimit: 1.5 },
      { senderFailureLimit: "5" as never },
      { senderFailureWindowMs: 0 },
      { senderFailureWindowMs: Number.NaN },
      { quarantineRefreshMs: 0 },
      { quarantineElsewhere: "nope" as never },
    ];
    for (const config of bad) {
      const e = await createRuntime(config).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e, JSON.stringify(config)).toBeInstanceOf(TroupeError);
      expect((e as TroupeError).code).toBe(ErrorCode.CONFIG_ERROR);
    }
    const ok = await createRuntime({
      senderFailureLimit: 0,
      senderFailureWindowMs: 1,
      quarantineRefreshMs: 10,
    });
    expect(ok.stages().map((s) => s.name)).toContain("sender");
    await ok.shutdown();
  });

  it("applies registry changes made by another process within quarantineRefreshMs", async () => {
    const clock = createManualClock();
    const runtime = await createRuntime({ agents: [counter], clock, quarantineRefreshMs: 1000 });
    // another process (another worker, the CLI) writes the entry straight into the registry
    await runtime.backend.quarantine.set({
      address: "~elsewhere",
      reason: "quarantined by another process",
      by: "auto",
      since: clock.now(),
      refuseFrames: true,
    });
    await sendValid(runtime, "~elsewhere", "counter/r", 1);
    await runtime.settled();
    expect(await countOf(runtime, "r")).toBe(1); // not seen yet: at most one refresh late
    await clock.advance(1000);
    await sendValid(runtime, "~elsewhere", "counter/r", 1);
    await runtime.settled();
    expect((await runtime.parked()).map((p) => p.code)).toEqual([ErrorCode.QUARANTINED]);
    await runtime.backend.quarantine.delete("~elsewhere");
    await clock.advance(1000);
    await sendValid(runtime, "~elsewhere", "counter/r", 1);
    await runtime.settled();
    expect(await countOf(runtime, "r")).toBe(2);
    await runtime.shutdown();
  });
});
