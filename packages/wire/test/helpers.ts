/** Test helpers: a seeded PRNG, sample frames, hand-built frames and error assertions. */
import { expect } from "vitest";
import {
  type ErrorCode,
  type Frame,
  FrameKind,
  isTroupeError,
  PayloadKind,
  TroupeError,
  WIRE_VERSION,
} from "../src/index.js";

/** mulberry32: small, fast, good enough to drive fuzzing, and reproducible from one seed. */
export function createRandom(seed: number) {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return {
    next,
    int,
    bool: (p = 0.5): boolean => next() < p,
    pick: <T>(items: readonly T[]): T => items[int(items.length)]!,
    bytes(n: number): Uint8Array {
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i++) out[i] = int(256);
      return out;
    },
  };
}
export type Random = ReturnType<typeof createRandom>;

export function sampleFrame(overrides: { envelope?: object; message?: object } = {}): Frame {
  return {
    envelope: {
      version: WIRE_VERSION,
      kind: FrameKind.EVENT,
      messageId: "m-0001",
      from: "support-bot/4711",
      to: "billing/acme",
      sequence: 1,
      timestampNs: 1_700_000_000_123_456_789n,
      ...overrides.envelope,
    },
    message: {
      kind: PayloadKind.DATA,
      payload: { type: "invoice.requested", amount: 42, currency: "EUR" },
      ...overrides.message,
    },
  } as Frame;
}

/** Lays out a frame by hand, so tests can put anything in any part. */
export function craftFrame(
  envelope: Uint8Array,
  body: Uint8Array,
  options: { version?: number; flags?: number; envelopeLength?: number } = {},
): Uint8Array {
  const out = new Uint8Array(7 + envelope.length + body.length);
  out[0] = 0x54;
  out[1] = options.version ?? WIRE_VERSION;
  out[2] = options.flags ?? 0;
  new DataView(out.buffer).setUint32(3, options.envelopeLength ?? envelope.length);
  out.set(envelope, 7);
  out.set(body, 7 + envelope.length);
  return out;
}

export function hex(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s.replace(/\s+/g, ""), "hex"));
}

export function toHexString(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** Runs fn and returns the TroupeError it throws; fails on success or on any other error. */
export function catchTroupe(fn: () => unknown): TroupeError {
  try {
    fn();
  } catch (e) {
    if (isTroupeError(e)) return e;
    throw new Error(`expected a TroupeError, got ${String(e)}`, { cause: e });
  }
  throw new Error("expected a TroupeError, but nothing was thrown");
}

export function expectCode(fn: () => unknown, code: ErrorCode, message?: RegExp): TroupeError {
  const e = catchTroupe(fn);
  expect(e).toBeInstanceOf(TroupeError);
  expect(e.code, e.message).toBe(code);
  if (message) expect(e.message).toMatch(message);
  return e;
}

/** An independent check that a decoded value really is a Frame (not the codec's own validator). */
export function assertValidFrame(frame: Frame): void {
  const { envelope: e, message: m } = frame;
  const str = (v: unknown, optional: boolean) =>
    (optional && v === undefined) || (typeof v === "string" && v.length <= 1024);
  const ok =
    e.version === WIRE_VERSION &&
    Object.values(FrameKind).includes(e.kind) &&
    str(e.messageId, false) &&
    e.messageId.length > 0 &&
    str(e.from, false) &&
    e.from.length > 0 &&
    str(e.to, false) &&
    e.to.length > 0 &&
    str(e.channel, true) &&
    str(e.correlationId, true) &&
    str(e.replyTo, true) &&
    Number.isSafeInteger(e.sequence) &&
    e.sequence >= 0 &&
    typeof e.timestampNs === "bigint" &&
    e.timestampNs >= 0n &&
    e.timestampNs < 2n ** 64n &&
    (e.trace === undefined ||
      (typeof e.trace.traceparent === "string" && str(e.trace.tracestate, true))) &&
    Object.values(PayloadKind).includes(m.kind) &&
    (m.kind !== PayloadKind.BYTES || m.payload instanceof Uint8Array) &&
    (m.meta === undefined || Object.values(m.meta).every((v) => typeof v === "string"));
  if (!ok) throw new Error(`decoded an invalid frame: ${String(JSON.stringify(frame, jsonSafe))}`);
}

export function jsonSafe(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return `${value}n`;
  if (value instanceof Uint8Array) return `bin:${toHexString(value)}`;
  return value;
}

/** What a payload value becomes after a round trip (see codec.ts on integers). */
export function normalizeValue(value: unknown): unknown {
  if (typeof value === "bigint") {
    return value >= -(2n ** 53n) && value <= 2n ** 53n ? Number(value) : value;
  }
  if (typeof value === "number") return Object.is(value, -0) ? 0 : value;
  if (value instanceof Uint8Array) return new Uint8Array(value);
  if (Array.isArray(value)) return Array.from(value, normalizeValue);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = normalizeValue(v);
    return out;
  }
  return value;
}
