/**
 * Fuzzing the decoders: whatever the bytes, decodeFrame / peekEnvelope / openFrame return a
 * valid result or throw a TroupeError with one of the four decoding codes. Seeded, so a failure
 * names the seed and case that reproduce it (override with WIRE_FUZZ_SEED).
 */
import { Packr } from "msgpackr";
import { afterAll, describe, expect, it } from "vitest";
import {
  DEFAULT_LIMITS,
  decodeFrame,
  ErrorCode,
  encodeFrame,
  type Frame,
  FrameKind,
  generateChannelKey,
  openFrame,
  PayloadKind,
  peekEnvelope,
  sealFrame,
  TroupeError,
} from "../src/index.js";
import {
  assertValidFrame,
  craftFrame,
  createRandom,
  normalizeValue,
  type Random,
  sampleFrame,
  toHexString,
} from "./helpers.js";

const SEED = Number(process.env.WIRE_FUZZ_SEED ?? 0x7209e);
const DECODE_CODES = new Set<string>([
  ErrorCode.DECODE_ERROR,
  ErrorCode.LIMIT_EXCEEDED,
  ErrorCode.UNSUPPORTED_VERSION,
  ErrorCode.CRYPTO_ERROR,
]);
const KEY = generateChannelKey();
const raw = new Packr({ useRecords: false, structuredClone: false });

let framesTried = 0;
const outcomes = new Map<string, number>();

function fail(where: string, seed: number, index: number, bytes: Uint8Array, why: unknown): never {
  const hexed = toHexString(bytes);
  throw new Error(
    `${where}: seed ${seed}, case ${index}: ${why instanceof Error ? why.stack : String(why)}\n` +
      `input (${bytes.length} bytes): ${hexed.length > 2000 ? `${hexed.slice(0, 2000)}…` : hexed}`,
  );
}

function classify(
  where: string,
  seed: number,
  index: number,
  bytes: Uint8Array,
  e: unknown,
): string {
  if (!(e instanceof TroupeError) || !DECODE_CODES.has(e.code)) fail(where, seed, index, bytes, e);
  // The decoders' last-resort guard: reaching it means a check is missing somewhere.
  if (e.message.startsWith("unexpected failure")) fail(where, seed, index, bytes, e);
  outcomes.set(e.code, (outcomes.get(e.code) ?? 0) + 1);
  return e.code;
}

/** A decoded frame must be valid and survive a re-encode unchanged. */
function checkDecoded(frame: Frame, seed: number, index: number, bytes: Uint8Array): void {
  try {
    assertValidFrame(frame);
    const again = decodeFrame(encodeFrame(frame));
    expect(again.envelope).toStrictEqual(frame.envelope);
    expect(normalizeValue(again.message)).toEqual(normalizeValue(frame.message));
  } catch (e) {
    fail("re-encode of a decoded frame", seed, index, bytes, e);
  }
  outcomes.set("ok", (outcomes.get("ok") ?? 0) + 1);
}

/** Runs every decoder over one input. */
function decodeAll(bytes: Uint8Array, seed: number, index: number): void {
  framesTried++;
  try {
    checkDecoded(decodeFrame(bytes), seed, index, bytes);
  } catch (e) {
    if (e instanceof Error && e.message.startsWith("re-encode")) throw e;
    classify("decodeFrame", seed, index, bytes, e);
  }
  try {
    const { envelope } = peekEnvelope(bytes);
    assertValidFrame({ envelope, message: { kind: PayloadKind.DATA, payload: null } });
  } catch (e) {
    if (e instanceof Error && e.message.startsWith("decoded an invalid")) {
      fail("peekEnvelope", seed, index, bytes, e);
    }
    classify("peekEnvelope", seed, index, bytes, e);
  }
  if (bytes[2] === 1) {
    try {
      checkDecoded(openFrame(bytes, KEY), seed, index, bytes);
    } catch (e) {
      if (e instanceof Error && e.message.startsWith("re-encode")) throw e;
      classify("openFrame", seed, index, bytes, e);
    }
  }
}

// ----- generators ------------------------------------------------------------------------------

const STRINGS = ["", "a", "type", "é", "😀", "中文", "__proto_", "constructor", "x".repeat(40)];

function randomString(r: Random): string {
  if (r.bool(0.6)) return r.pick(STRINGS);
  let s = "";
  const n = r.int(12);
  for (let i = 0; i < n; i++) {
    const range = r.pick([0x7f, 0x7ff, 0xd7ff]);
    s += String.fromCharCode(0x20 + r.int(range - 0x20));
  }
  return s;
}

/** Values the codec accepts (plus, with `hostile`, values it must refuse). */
function randomValue(r: Random, depth: number, hostile: boolean): unknown {
  const leafOnly = depth >= 4;
  switch (r.int(leafOnly ? 10 : 13) + (hostile && r.bool(0.08) ? 100 : 0)) {
    case 0:
      return null;
    case 1:
      return undefined;
    case 2:
      return r.bool();
    case 3:
      return r.int(300) - 150;
    case 4:
      return (r.next() - 0.5) * 2 ** r.int(70);
    case 5:
      return r.pick([2 ** 32, -(2 ** 31) - 1, 2 ** 53, Number.NaN, Number.POSITIVE_INFINITY, -0]);
    case 6:
      return BigInt.asIntN(64, BigInt(r.int(2 ** 31)) * BigInt(r.int(2 ** 31)) * 7n);
    case 7:
    case 8:
      return randomString(r);
    case 9:
      return r.bytes(r.int(20));
    case 10:
    case 11:
      return Array.from({ length: r.int(5) }, () => randomValue(r, depth + 1, hostile));
    case 12: {
      const o: Record<string, unknown> = {};
      for (let i = r.int(5); i > 0; i--) o[randomString(r)] = randomValue(r, depth + 1, hostile);
      return o;
    }
    default:
      return r.pick<() => unknown>([
        () => new Map([["a", 1]]),
        () => new Set([1]),
        () => new Date(0),
        () => () => 1,
        () => Symbol("s"),
        () => 2n ** 64n,
        () => new Float64Array(2),
        () => new (class Thing {})(),
        () => JSON.parse('{"__proto__": 1}'),
        () => "x".repeat(DEFAULT_LIMITS.maxStringBytes + 1),
        () => {
          let v: unknown = 1;
          for (let i = 0; i < 40; i++) v = [v];
          return v;
        },
      ])();
  }
}

function randomFrame(r: Random, hostile = false): Frame {
  const envelope: Record<string, unknown> = {
    kind: r.pick(Object.values(FrameKind)),
    messageId: randomString(r) || "m",
    from: `agent/${randomString(r)}`,
    to: `other/${randomString(r)}`,
    sequence: r.pick([0, 1, r.int(1000), 2 ** 40, Number.MAX_SAFE_INTEGER]),
    timestampNs: r.pick([0n, 1_700_000_000_000_000_000n, 2n ** 64n - 1n, BigInt(r.int(2 ** 31))]),
  };
  if (r.bool()) envelope.channel = randomString(r);
  if (r.bool()) envelope.correlationId = randomString(r);
  if (r.bool(0.3)) envelope.replyTo = randomString(r);
  if (r.bool(0.3)) {
    envelope.trace = r.bool()
      ? { traceparent: "00-a-b-01" }
      : { traceparent: "00-a-b-01", tracestate: "k=v" };
  }
  const kind = r.pick(Object.values(PayloadKind));
  const payload =
    kind === PayloadKind.BYTES
      ? r.bytes(r.int(64))
      : kind === PayloadKind.ERROR
        ? { code: ErrorCode.TIMEOUT, message: randomString(r), details: { n: r.int(9) } }
        : randomValue(r, 0, hostile);
  const message: Record<string, unknown> = { kind, payload };
  if (r.bool(0.3)) message.meta = { [randomString(r)]: randomString(r) };
  return sampleFrame({ envelope, message });
}

const INTERESTING = [
  0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc4, 0xc5, 0xc6, 0xc7,
  0xca, 0xcb, 0xcf, 0xd3, 0xd4, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
];

function envelopeEnd(bytes: Uint8Array): number {
  return 7 + new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(3);
}

/** Flips, overwrites, truncates, inserts, deletes, duplicates — sometimes fixing up the length. */
function mutate(r: Random, original: Uint8Array): Uint8Array {
  let b = original.slice();
  const rounds = 1 + r.int(3);
  for (let k = 0; k < rounds; k++) {
    const at = r.int(b.length + 1);
    const before = b.length >= 7 ? envelopeEnd(b) : -1;
    switch (r.int(7)) {
      case 0: // bit flips
        for (let i = 1 + r.int(4); i > 0 && b.length > 0; i--) b[r.int(b.length)]! ^= 1 << r.int(8);
        break;
      case 1: // interesting bytes
        if (b.length > 0) b[r.int(b.length)] = r.pick(INTERESTING);
        break;
      case 2: // random bytes
        for (let i = 1 + r.int(4); i > 0 && b.length > 0; i--) b[r.int(b.length)] = r.int(256);
        break;
      case 3: // truncate
        b = b.slice(0, at);
        break;
      case 4: {
        // insert
        const extra = r.bool() ? r.bytes(1 + r.int(8)) : new Uint8Array([r.pick(INTERESTING)]);
        b = new Uint8Array([...b.subarray(0, at), ...extra, ...b.subarray(at)]);
        if (before >= 0 && at < before && r.bool(0.7)) {
          new DataView(b.buffer).setUint32(3, before - 7 + extra.length);
        }
        break;
      }
      case 5: {
        // delete a range
        const n = 1 + r.int(8);
        b = new Uint8Array([...b.subarray(0, at), ...b.subarray(at + n)]);
        if (before >= 0 && b.length >= 7 && at >= 7 && at < before && r.bool(0.7)) {
          new DataView(b.buffer).setUint32(3, Math.max(0, before - 7 - Math.min(n, before - at)));
        }
        break;
      }
      default: {
        // duplicate a range
        const n = 1 + r.int(16);
        b = new Uint8Array([...b.subarray(0, at), ...b.subarray(at, at + n), ...b.subarray(at)]);
        break;
      }
    }
  }
  return b;
}

/** Random msgpack-looking bytes: plausible headers with wild lengths and nesting. */
function randomMsgpack(r: Random, budget: number): number[] {
  const out: number[] = [];
  let open = 1;
  while (open > 0 && out.length < budget) {
    open--;
    const t = r.int(16);
    if (t < 3) {
      const n = r.pick([0, 1, 2, 3, 15, 16, 65_535, 65_536, 2 ** 32 - 1, r.int(6)]);
      const map = r.bool(0.4);
      if (n < 16 && r.bool()) out.push((map ? 0x80 : 0x90) | n);
      else if (n < 65_536 && r.bool()) out.push(map ? 0xde : 0xdc, n >> 8, n & 0xff);
      else
        out.push(
          map ? 0xdf : 0xdd,
          (n >>> 24) & 0xff,
          (n >>> 16) & 0xff,
          (n >>> 8) & 0xff,
          n & 0xff,
        );
      open += Math.min(map ? n * 2 : n, 64);
    } else if (t < 6) {
      const n = r.pick([0, 1, 5, 9, 31, 255, 300, 2 ** 32 - 1, r.int(20)]);
      const bin = r.bool(0.3);
      if (!bin && n < 32 && r.bool()) out.push(0xa0 | n);
      else if (n < 256) out.push(bin ? 0xc4 : 0xd9, n);
      else if (n < 65_536) out.push(bin ? 0xc5 : 0xda, n >> 8, n & 0xff);
      else out.push(bin ? 0xc6 : 0xdb, 0xff, 0xff, 0xff, 0xff);
      for (let i = Math.min(n, 40) - (r.bool(0.2) ? 1 : 0); i > 0; i--) out.push(0x61 + r.int(26));
    } else if (t < 8) {
      out.push(r.pick([0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xca, 0xcb]));
      for (let i = r.int(9); i > 0; i--) out.push(r.int(256));
    } else if (t < 9) {
      out.push(r.pick([0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8]), r.int(256), 0, 0);
    } else {
      out.push(r.pick(INTERESTING), r.int(256));
      if (r.bool(0.5)) out.pop();
    }
  }
  if (r.bool(0.1)) out.push(r.int(256)); // trailing byte
  return out;
}

// ----- the fuzz campaigns ----------------------------------------------------------------------

const corpus = (() => {
  const r = createRandom(SEED);
  const frames = Array.from({ length: 64 }, () => randomFrame(r));
  return {
    plain: frames.map((f) => encodeFrame(f)),
    sealed: frames.map((f) => sealFrame(f, KEY)),
  };
})();

describe("fuzz", () => {
  afterAll(() => {
    console.log(
      `wire fuzz: ${framesTried} frames, seed ${SEED}, outcomes`,
      Object.fromEntries(outcomes),
    );
  });

  it("random bytes", () => {
    const seed = SEED + 1;
    const r = createRandom(seed);
    for (let i = 0; i < 40_000; i++) {
      const length = r.bool(0.2) ? r.int(16) : r.bool(0.9) ? r.int(300) : r.int(3000);
      const bytes = r.bytes(length);
      if (length >= 7 && r.bool(0.4)) {
        bytes.set([0x54, r.bool(0.9) ? 1 : r.int(256), r.bool(0.8) ? r.int(2) : r.int(256)]);
        new DataView(bytes.buffer).setUint32(3, r.int(length));
      }
      decodeAll(bytes, seed, i);
    }
  });

  it("mutated plain frames", () => {
    const seed = SEED + 2;
    const r = createRandom(seed);
    for (let i = 0; i < 80_000; i++) decodeAll(mutate(r, r.pick(corpus.plain)), seed, i);
  });

  it("mutated sealed frames never open", () => {
    const seed = SEED + 3;
    const r = createRandom(seed);
    for (let i = 0; i < 25_000; i++) {
      const original = r.pick(corpus.sealed);
      const bytes = mutate(r, original);
      const unchanged = toHexString(bytes) === toHexString(original);
      framesTried++;
      try {
        openFrame(bytes, KEY);
        if (!unchanged) fail("openFrame accepted an altered frame", seed, i, bytes, "opened");
      } catch (e) {
        if (classify("openFrame", seed, i, bytes, e) !== ErrorCode.CRYPTO_ERROR) {
          fail("openFrame of an altered frame", seed, i, bytes, e);
        }
      }
      try {
        peekEnvelope(bytes);
      } catch (e) {
        classify("peekEnvelope", seed, i, bytes, e);
      }
    }
  });

  it("well-formed msgpack in the wrong shapes", () => {
    const seed = SEED + 4;
    const r = createRandom(seed);
    const validEnvelope: unknown[] = [1n, 0, 1, "m", "a/1", "b/2", "ch", "c", "r", ["tp", "ts"]];
    const validBody = raw.pack([0, { type: "ping" }]);
    for (let i = 0; i < 25_000; i++) {
      let envelope: Uint8Array = raw.pack(validEnvelope.slice(0, 6 + r.int(5)));
      let body: Uint8Array = validBody;
      switch (r.int(4)) {
        case 0:
          envelope = raw.pack(randomValue(r, 0, false));
          break;
        case 1: {
          const fields = validEnvelope.slice(0, 6 + r.int(5));
          for (let k = 1 + r.int(2); k > 0; k--)
            fields[r.int(fields.length + 1)] = randomValue(r, 2, false);
          envelope = raw.pack(fields);
          break;
        }
        case 2:
          body = raw.pack(randomValue(r, 0, false));
          break;
        default: {
          const message: unknown[] = [
            r.bool(0.8) ? r.int(4) : randomValue(r, 3, false),
            randomValue(r, 1, false),
          ];
          if (r.bool(0.3))
            message.push(r.bool() ? { k: randomString(r) } : randomValue(r, 2, false));
          if (r.bool(0.05)) message.push(1);
          body = raw.pack(message);
        }
      }
      decodeAll(craftFrame(envelope, body), seed, i);
    }
  });

  it("random msgpack token streams", () => {
    const seed = SEED + 5;
    const r = createRandom(seed);
    const envelope = raw.pack([1n, 0, 1, "m", "a/1", "b/2"]);
    for (let i = 0; i < 25_000; i++) {
      const stream = new Uint8Array(randomMsgpack(r, 400));
      const bytes = r.bool(0.8)
        ? craftFrame(envelope, new Uint8Array([0x92, 0x00, ...stream]))
        : craftFrame(stream, raw.pack([0, 1]));
      decodeAll(bytes, seed, i);
    }
  });

  it("random payloads: encode refuses with a typed error or round-trips exactly", () => {
    const seed = SEED + 6;
    const r = createRandom(seed);
    for (let i = 0; i < 15_000; i++) {
      const frame = randomFrame(r, true);
      let bytes: Uint8Array;
      try {
        bytes = r.bool(0.2) ? sealFrame(frame, KEY) : encodeFrame(frame);
      } catch (e) {
        if (
          !(e instanceof TroupeError) ||
          (e.code !== ErrorCode.INVALID_ARGUMENT && e.code !== ErrorCode.LIMIT_EXCEEDED)
        ) {
          throw new Error(`encode: seed ${seed}, case ${i}: ${String(e)}`, { cause: e });
        }
        outcomes.set(`encode ${e.code}`, (outcomes.get(`encode ${e.code}`) ?? 0) + 1);
        continue;
      }
      framesTried++;
      const decoded = bytes[2] === 1 ? openFrame(bytes, KEY) : decodeFrame(bytes);
      expect(decoded.envelope).toStrictEqual(frame.envelope);
      expect(normalizeValue(decoded.message)).toEqual(normalizeValue(frame.message));
    }
  });

  it("covered at least 100,000 frames", () => {
    expect(framesTried).toBeGreaterThanOrEqual(100_000);
  });
});
