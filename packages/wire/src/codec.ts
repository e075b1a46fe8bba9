/** The frame codec: a fixed binary header, a positional msgpack envelope and a msgpack message body. */
import { type Options, Packr, Unpackr } from "msgpackr";
import { ErrorCode, TroupeError } from "./errors.js";
import {
  DEFAULT_LIMITS,
  type DecodeLimits,
  type Envelope,
  type Frame,
  FrameKind,
  type Message,
  PayloadKind,
  WIRE_VERSION,
} from "./frame.js";
import {
  assertLimits,
  checkPayload,
  formatPayloadPath,
  type PayloadBudget,
  type ScanRules,
  scanMsgpack,
} from "./limits.js";

/*
 * Physical layout (stable across versions, so any version can at least be recognised):
 *
 *   magic 0x54 'T' | version u8 | flags u8 (bit 0 = sealed) | envelope length u32 BE
 *   | envelope (msgpack) | body
 *
 * body = msgpack(message) when plain, nonce(24) ‖ ciphertext ‖ tag(16) when sealed.
 *
 * Envelope (version 1), a msgpack array — positions, not keys, for size and speed:
 *   [timestampNs uint64, kind, sequence, messageId, from, to,
 *    channel?, correlationId?, replyTo?, trace?]        trace = [traceparent, tracestate?]
 * Absent optional fields are nil, and trailing absent ones are left out. The version lives
 * only in the header byte. Kinds travel as small integers (index into FRAME_KINDS).
 *
 * Message: [payloadKind, payload, meta?] with payloadKind an index into PAYLOAD_KINDS.
 *
 * Integers: the envelope's int64 values decode as bigint (the timestamp is a full uint64);
 * payload int64 values decode as numbers when within ±2^53 and as bigint beyond, so no value
 * silently loses precision and ordinary JSON-like events stay plain numbers. A consequence: a
 * bigint payload value within ±2^53 comes back as a number.
 */

export const FRAME_MAGIC = 0x54;
export const FRAME_HEADER_BYTES = 7;
export const FLAG_SEALED = 0x01;
export const NONCE_BYTES = 24;
export const TAG_BYTES = 16;
/** No valid version-1 envelope comes near this; bigger ones are refused before decoding. */
export const MAX_ENVELOPE_BYTES = 32 * 1024;
/** Envelope strings, in UTF-16 units (at most 3 UTF-8 bytes each). */
export const MAX_ENVELOPE_FIELD_LENGTH = 1024;

const FRAME_KINDS: readonly FrameKind[] = [
  FrameKind.EVENT,
  FrameKind.REQUEST,
  FrameKind.REPLY,
  FrameKind.ERROR,
  FrameKind.SYSTEM,
];
const PAYLOAD_KINDS: readonly PayloadKind[] = [
  PayloadKind.DATA,
  PayloadKind.BYTES,
  PayloadKind.ERROR,
];
const FRAME_KIND_CODE = new Map<unknown, number>(FRAME_KINDS.map((k, i) => [k, i]));
const PAYLOAD_KIND_CODE = new Map<unknown, number>(PAYLOAD_KINDS.map((k, i) => [k, i]));

const MAX_UINT64 = 2n ** 64n - 1n;
const MIN_ENVELOPE_ITEMS = 6;
const MAX_ENVELOPE_ITEMS = 10;

// Peer-safe msgpackr settings: no records or shared structures (a peer could otherwise define
// structures that turn later bytes into objects), no structured clone, maps as plain objects.
// The scanner already refuses every extension except msgpackr's `undefined`.
const COMMON: Options = {
  useRecords: false,
  mapsAsObjects: true,
  structuredClone: false,
  moreTypes: false,
  bundleStrings: false,
};
// Functions reach writeFunction; throwing there turns them into INVALID_ARGUMENT (checkPayload
// refuses them first, this is the backstop).
const payloadPackr = new Packr({
  ...COMMON,
  writeFunction: () => {
    throw new TypeError("functions cannot be encoded");
  },
});
const envelopeUnpackr = new Unpackr({ ...COMMON, int64AsType: "bigint" });
// 'auto' is documented in msgpackr's README but missing from its 2.1.3 typings.
const AUTO_INT64 = { int64AsType: "auto" } as unknown as Options;
// decodeFrame copies binaries out of the caller's buffer (transports recycle buffers);
// openFrame decodes a fresh plaintext it owns, so views are safe and cheaper there.
const payloadUnpackr = new Unpackr({ ...COMMON, ...AUTO_INT64, copyBuffers: true });
const payloadUnpackrNoCopy = new Unpackr({ ...COMMON, ...AUTO_INT64, copyBuffers: false });

const ENVELOPE_RULES: ScanRules = Object.freeze({
  maxDepth: 2,
  maxCollectionLength: MAX_ENVELOPE_ITEMS,
  maxStringBytes: MAX_ENVELOPE_FIELD_LENGTH * 3,
  maxTotalItems: MAX_ENVELOPE_ITEMS + 3, // the array, its fields, two trace strings
  allowUndefined: false,
});

// The message wrapper ([kind, payload, meta?]) is one level and two values (array, kind code)
// on top of what DecodeLimits allow the payload and meta.
const bodyRulesCache = new WeakMap<DecodeLimits, ScanRules>();

function bodyRules(limits: DecodeLimits): ScanRules {
  let rules = bodyRulesCache.get(limits);
  if (rules === undefined) {
    assertLimits(limits);
    rules = Object.freeze({
      maxDepth: limits.maxDepth + 1,
      maxCollectionLength: limits.maxCollectionLength,
      maxStringBytes: limits.maxStringBytes,
      maxTotalItems: limits.maxTotalItems + 2,
      allowUndefined: true,
    });
    bodyRulesCache.set(limits, rules);
  }
  return rules;
}

// Packr writes into a scratch buffer shared by all instances and keeps it; after an unusually
// large value, hand it a small one so a single big frame does not pin megabytes forever.
const LARGE_PACK_BYTES = 1024 * 1024;

export function releaseLargeScratch(packed: Uint8Array): void {
  if (packed.length > LARGE_PACK_BYTES) payloadPackr.useBuffer(new Uint8Array(8192));
}

function invalid(message: string, cause?: unknown): TroupeError {
  return new TroupeError(
    ErrorCode.INVALID_ARGUMENT,
    message,
    cause === undefined ? undefined : { cause },
  );
}

function decodeError(message: string, cause?: unknown): TroupeError {
  return new TroupeError(
    ErrorCode.DECODE_ERROR,
    message,
    cause === undefined ? undefined : { cause },
  );
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== "object" || v === null) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

// ---------------------------------------------------------------------------------------------
// Encoding

/*
 * The envelope is written by hand rather than by msgpackr: it is a fixed, small shape, and
 * writing it straight into the frame saves a pack call (~0.45 µs, a quarter of encodeFrame at
 * 256 B) and a copy. It is still the positional msgpack array described above, read back by
 * msgpackr after the scanner; the round-trip and fuzz tests hold the two sides together.
 */

/** String slots: messageId, from, to, channel, correlationId, replyTo, traceparent, tracestate. */
const STRING_SLOTS = 8;
const SLOT_TRACEPARENT = 6;
const SLOT_TRACESTATE = 7;

/** A validated envelope with its encoded size, ready to be written. */
export interface EnvelopeLayout {
  timestampNs: bigint;
  kind: number;
  sequence: number;
  /** Per slot: the string, or null when absent. */
  strings: (string | null)[];
  /** Per slot: UTF-8 byte length (-1 when absent). */
  byteLengths: number[];
  /** Array elements written, 6 to 10 (trailing absent fields are left out). */
  fieldCount: number;
  /** Encoded bytes. */
  size: number;
}

function stringSize(byteLength: number): number {
  return (byteLength < 32 ? 1 : byteLength < 256 ? 2 : 3) + byteLength;
}

function uintSize(n: number): number {
  return n < 0x80 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : n <= 0xffffffff ? 5 : 9;
}

function envelopeString(value: unknown, field: string, required: boolean): string | null {
  if (value === undefined && !required) return null;
  if (typeof value !== "string") {
    throw invalid(`envelope.${field} must be a string${required ? "" : " or undefined"}`);
  }
  if (value.length > MAX_ENVELOPE_FIELD_LENGTH) {
    throw invalid(`envelope.${field} is longer than ${MAX_ENVELOPE_FIELD_LENGTH} characters`);
  }
  if (required && value.length === 0) throw invalid(`envelope.${field} must not be empty`);
  return value;
}

/** Validates an envelope and measures its encoding. */
export function planEnvelope(envelope: Envelope): EnvelopeLayout {
  if (!isPlainObject(envelope)) throw invalid("frame.envelope must be an object");
  if (envelope.version !== WIRE_VERSION) {
    throw invalid(`envelope.version must be ${WIRE_VERSION}, got ${String(envelope.version)}`);
  }
  const kind = FRAME_KIND_CODE.get(envelope.kind);
  if (kind === undefined) {
    throw invalid(`envelope.kind ${JSON.stringify(envelope.kind)} is unknown`);
  }
  const { sequence, timestampNs, trace } = envelope;
  if (typeof sequence !== "number" || !Number.isSafeInteger(sequence) || sequence < 0) {
    throw invalid("envelope.sequence must be a non-negative safe integer");
  }
  if (typeof timestampNs !== "bigint" || timestampNs < 0n || timestampNs > MAX_UINT64) {
    throw invalid("envelope.timestampNs must be a bigint in [0, 2^64)");
  }
  const strings: (string | null)[] = [
    envelopeString(envelope.messageId, "messageId", true),
    envelopeString(envelope.from, "from", true),
    envelopeString(envelope.to, "to", true),
    envelopeString(envelope.channel, "channel", false),
    envelopeString(envelope.correlationId, "correlationId", false),
    envelopeString(envelope.replyTo, "replyTo", false),
    null,
    null,
  ];
  if (trace !== undefined) {
    if (!isPlainObject(trace)) throw invalid("envelope.trace must be an object or undefined");
    strings[SLOT_TRACEPARENT] = envelopeString(trace.traceparent, "trace.traceparent", true);
    strings[SLOT_TRACESTATE] = envelopeString(trace.tracestate, "trace.tracestate", false);
  }
  // [ts, kind, sequence, messageId, from, to, channel?, correlationId?, replyTo?, trace?]
  let fieldCount = strings[SLOT_TRACEPARENT] !== null ? 10 : 6;
  if (fieldCount === 6) {
    for (let slot = 5; slot >= 3; slot--) {
      if (strings[slot] !== null) {
        fieldCount = slot + 4;
        break;
      }
    }
  }
  const byteLengths: number[] = [];
  let size = 1 + 9 + 1 + uintSize(sequence); // fixarray, uint64 timestamp, kind, sequence
  for (let slot = 0; slot < STRING_SLOTS; slot++) {
    const str = strings[slot]!;
    if (str === null) {
      byteLengths.push(-1);
      if (slot < SLOT_TRACEPARENT && slot + 4 <= fieldCount) size += 1; // nil
    } else {
      const length = Buffer.byteLength(str, "utf8"); // native; faster than a JS ASCII scan
      byteLengths.push(length);
      size += stringSize(length);
    }
  }
  if (fieldCount === 10) size += 1; // the trace's fixarray
  return { timestampNs, kind, sequence, strings, byteLengths, fieldCount, size };
}

const utf8 = new TextEncoder();
const scratch64 = new DataView(new ArrayBuffer(8));

function writeString(out: Uint8Array, pos: number, s: string, length: number): number {
  if (length < 32) {
    out[pos++] = 0xa0 | length;
  } else if (length < 256) {
    out[pos++] = 0xd9;
    out[pos++] = length;
  } else {
    out[pos++] = 0xda;
    out[pos++] = length >>> 8;
    out[pos++] = length & 0xff;
  }
  if (length === s.length) {
    // Byte length equal to UTF-16 length means pure ASCII; a plain loop beats native calls here.
    for (let i = 0; i < length; i++) out[pos + i] = s.charCodeAt(i);
  } else {
    utf8.encodeInto(s, out.subarray(pos, pos + length));
  }
  return pos + length;
}

/** Writes a planned envelope at `pos`; returns the position after it. */
function writeEnvelope(out: Uint8Array, pos: number, layout: EnvelopeLayout): number {
  const { strings, byteLengths, fieldCount, sequence } = layout;
  out[pos++] = 0x90 | fieldCount;
  // The timestamp is a full uint64, always written as such (0xcf), whatever its value.
  scratch64.setBigUint64(0, layout.timestampNs);
  out[pos++] = 0xcf;
  for (let i = 0; i < 8; i++) out[pos++] = scratch64.getUint8(i);
  out[pos++] = layout.kind;
  if (sequence < 0x80) {
    out[pos++] = sequence;
  } else if (sequence < 0x100) {
    out[pos++] = 0xcc;
    out[pos++] = sequence;
  } else if (sequence < 0x10000) {
    out[pos++] = 0xcd;
    out[pos++] = sequence >>> 8;
    out[pos++] = sequence & 0xff;
  } else if (sequence <= 0xffffffff) {
    out[pos++] = 0xce;
    out[pos++] = sequence >>> 24;
    out[pos++] = (sequence >>> 16) & 0xff;
    out[pos++] = (sequence >>> 8) & 0xff;
    out[pos++] = sequence & 0xff;
  } else {
    scratch64.setBigUint64(0, BigInt(sequence));
    out[pos++] = 0xcf;
    for (let i = 0; i < 8; i++) out[pos++] = scratch64.getUint8(i);
  }
  for (let slot = 0; slot < SLOT_TRACEPARENT && slot + 4 <= fieldCount; slot++) {
    const str = strings[slot]!;
    if (str === null) out[pos++] = 0xc0;
    else pos = writeString(out, pos, str, byteLengths[slot]!);
  }
  if (fieldCount === 10) {
    const tracestate = strings[SLOT_TRACESTATE]!;
    out[pos++] = tracestate === null ? 0x91 : 0x92;
    pos = writeString(out, pos, strings[SLOT_TRACEPARENT]!, byteLengths[SLOT_TRACEPARENT]!);
    if (tracestate !== null) pos = writeString(out, pos, tracestate, byteLengths[SLOT_TRACESTATE]!);
  }
  return pos;
}

function checkErrorInfo(payload: unknown): void {
  if (
    !isPlainObject(payload) ||
    typeof payload.code !== "string" ||
    payload.code.length === 0 ||
    typeof payload.message !== "string" ||
    (payload.details !== undefined && !isPlainObject(payload.details)) ||
    (payload.retryAfterMs !== undefined &&
      !(Number.isFinite(payload.retryAfterMs) && (payload.retryAfterMs as number) >= 0))
  ) {
    throw invalid(
      "an error message's payload must be an ErrorInfo { code, message, details?, retryAfterMs? }",
    );
  }
}

/** Validates a message against the payload rules and packs it. */
function packMessage(message: Message, rules: ScanRules): Uint8Array {
  if (!isPlainObject(message)) throw invalid("frame.message must be an object");
  const kind = PAYLOAD_KIND_CODE.get(message.kind);
  if (kind === undefined) throw invalid(`message.kind ${JSON.stringify(message.kind)} is unknown`);
  const { payload, meta } = message;
  if (message.kind === PayloadKind.BYTES && !(payload instanceof Uint8Array)) {
    throw invalid("a bytes message's payload must be a Uint8Array");
  }
  if (message.kind === PayloadKind.ERROR) checkErrorInfo(payload);
  const budget: PayloadBudget = { items: 2 };
  try {
    checkPayload(payload, rules, budget, 1);
  } catch (e) {
    if (e instanceof TroupeError) e.message = `${e.message} at ${formatPayloadPath(e, "payload")}`;
    throw e;
  }
  if (meta !== undefined) {
    if (!isPlainObject(meta)) throw invalid("message.meta must be a plain object of strings");
    for (const key in meta) {
      if (typeof meta[key] !== "string") throw invalid(`message.meta.${key} must be a string`);
    }
    try {
      checkPayload(meta, rules, budget, 1);
    } catch (e) {
      if (e instanceof TroupeError) e.message = `${e.message} at ${formatPayloadPath(e, "meta")}`;
      throw e;
    }
  }
  return payloadPackr.pack(meta === undefined ? [kind, payload] : [kind, payload, meta]);
}

/** A validated frame: its envelope planned, its message packed. */
export interface FrameParts {
  envelope: EnvelopeLayout;
  message: Uint8Array;
}

/** Validates and packs a frame; the one place encode and seal turn caller mistakes into errors. */
export function packFrame(frame: Frame, limits: DecodeLimits): FrameParts {
  const rules = bodyRules(limits);
  try {
    if (typeof frame !== "object" || frame === null) throw invalid("frame must be an object");
    const envelope = planEnvelope(frame.envelope);
    const message = packMessage(frame.message, rules);
    return { envelope, message };
  } catch (e) {
    if (e instanceof TroupeError) throw e;
    // Throwing getters, stack overflows: whatever msgpackr or the value threw.
    throw invalid(`frame cannot be encoded: ${e instanceof Error ? e.message : String(e)}`, e);
  }
}

export function assertFrameSize(total: number, limits: DecodeLimits): void {
  if (total > limits.maxFrameBytes) {
    throw new TroupeError(
      ErrorCode.LIMIT_EXCEEDED,
      `frame of ${total} bytes exceeds maxFrameBytes ${limits.maxFrameBytes}`,
      { details: { limit: "maxFrameBytes", bytes: total } },
    );
  }
}

/**
 * Memory for a frame: a plain Uint8Array over Node's pooled allocation. Plain, so callers get
 * TypedArray semantics (Buffer#slice would alias); pooled, because a standalone ArrayBuffer
 * costs ~200 ns more per small frame. Like any view it may start at a non-zero byteOffset.
 */
export function allocateFrame(total: number): Uint8Array {
  const pooled = Buffer.allocUnsafe(total);
  return new Uint8Array(pooled.buffer, pooled.byteOffset, total);
}

/** Writes header and envelope into `out`; returns where the body starts. */
export function writeFrameHead(out: Uint8Array, flags: number, envelope: EnvelopeLayout): number {
  const length = envelope.size;
  out[0] = FRAME_MAGIC;
  out[1] = WIRE_VERSION;
  out[2] = flags;
  out[3] = length >>> 24;
  out[4] = (length >>> 16) & 0xff;
  out[5] = (length >>> 8) & 0xff;
  out[6] = length & 0xff;
  const end = writeEnvelope(out, FRAME_HEADER_BYTES, envelope);
  if (end !== FRAME_HEADER_BYTES + length) {
    throw new TroupeError(ErrorCode.INVALID_STATE, "envelope size was mis-measured (a bug)");
  }
  return end;
}

/**
 * Encodes a plain (unsealed) frame. Throws INVALID_ARGUMENT for a malformed frame or a payload
 * the decoder would not give back unchanged, and LIMIT_EXCEEDED when the frame or any part of
 * its payload exceeds `limits` — so nothing a peer would refuse is ever sent.
 */
export function encodeFrame(frame: Frame, limits: DecodeLimits = DEFAULT_LIMITS): Uint8Array {
  const parts = packFrame(frame, limits);
  const total = FRAME_HEADER_BYTES + parts.envelope.size + parts.message.length;
  assertFrameSize(total, limits);
  const out = allocateFrame(total);
  const bodyStart = writeFrameHead(out, 0, parts.envelope);
  out.set(parts.message, bodyStart);
  releaseLargeScratch(parts.message);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** Where the parts of a frame lie, from its header. */
export interface FrameHead {
  version: number;
  sealed: boolean;
  /** End of the envelope = start of the body. */
  envelopeEnd: number;
}

/** Refuses non-bytes and oversized input; the first two checks of every decoding entry point. */
export function assertFrameInput(
  bytes: unknown,
  limits: DecodeLimits,
): asserts bytes is Uint8Array {
  if (!(bytes instanceof Uint8Array)) {
    throw decodeError("a frame must be a Uint8Array");
  }
  assertLimits(limits);
  if (bytes.length > limits.maxFrameBytes) {
    throw new TroupeError(
      ErrorCode.LIMIT_EXCEEDED,
      `frame of ${bytes.length} bytes exceeds maxFrameBytes ${limits.maxFrameBytes}`,
      { details: { limit: "maxFrameBytes", bytes: bytes.length } },
    );
  }
}

/** Envelope length as written in the header (the caller has checked there is a header). */
export function readEnvelopeLength(bytes: Uint8Array): number {
  return bytes[3]! * 0x1000000 + ((bytes[4]! << 16) | (bytes[5]! << 8) | bytes[6]!);
}

/** Parses and checks the header of an unauthenticated frame (decode and peek). */
function readFrameHead(bytes: Uint8Array): FrameHead {
  if (bytes.length < FRAME_HEADER_BYTES) throw decodeError("frame shorter than its header");
  if (bytes[0] !== FRAME_MAGIC) throw decodeError("not a Troupe frame (bad magic byte)");
  const version = bytes[1]!;
  if (version !== WIRE_VERSION) {
    throw new TroupeError(
      ErrorCode.UNSUPPORTED_VERSION,
      `frame version ${version} is not supported (this peer speaks ${WIRE_VERSION})`,
      { details: { version, supported: [WIRE_VERSION] } },
    );
  }
  const flags = bytes[2]!;
  if ((flags & ~FLAG_SEALED) !== 0) {
    throw decodeError(`unknown frame flags 0x${flags.toString(16)}`);
  }
  const sealed = flags === FLAG_SEALED;
  const envelopeLength = readEnvelopeLength(bytes);
  const minBody = sealed ? NONCE_BYTES + TAG_BYTES + 1 : 1;
  if (envelopeLength < 1 || envelopeLength > bytes.length - FRAME_HEADER_BYTES - minBody) {
    throw decodeError("envelope length does not fit the frame");
  }
  return { version, sealed, envelopeEnd: FRAME_HEADER_BYTES + envelopeLength };
}

/**
 * A plain Uint8Array over the caller's bytes, made once per frame: msgpackr caches a DataView on
 * whatever it is given (better ours than the caller's), and binaries sliced from a plain view
 * come out as plain Uint8Arrays even when the input is a Buffer.
 */
export function plainView(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}

function fieldString(value: unknown, field: string, required: boolean): string | undefined {
  if (value === null && !required) return undefined;
  if (
    typeof value !== "string" ||
    value.length > MAX_ENVELOPE_FIELD_LENGTH ||
    (required && value.length === 0)
  ) {
    throw decodeError(`envelope field ${field} is invalid`);
  }
  return value;
}

/** Decodes and validates the envelope in `view[start, end)` (view: from plainView). */
export function decodeEnvelope(
  bytes: Uint8Array,
  start: number,
  end: number,
  version: number,
): Envelope {
  if (end - start > MAX_ENVELOPE_BYTES) {
    throw new TroupeError(
      ErrorCode.LIMIT_EXCEEDED,
      `envelope of ${end - start} bytes exceeds ${MAX_ENVELOPE_BYTES}`,
      { details: { limit: "envelope", bytes: end - start } },
    );
  }
  try {
    scanMsgpack(bytes, start, end, ENVELOPE_RULES);
  } catch (e) {
    // The envelope's shape is fixed by the format, not by configurable limits.
    const reason = e instanceof Error ? e.message : String(e);
    throw decodeError(`envelope is malformed: ${reason}`, e);
  }
  let raw: unknown;
  try {
    raw = envelopeUnpackr.unpack(bytes, { start, end });
  } catch (e) {
    throw decodeError("envelope is not valid msgpack", e);
  }
  if (!Array.isArray(raw) || raw.length < MIN_ENVELOPE_ITEMS || raw.length > MAX_ENVELOPE_ITEMS) {
    throw decodeError("envelope is not an array of 6 to 10 fields");
  }
  let ts: unknown = raw[0];
  if (typeof ts === "number" && Number.isSafeInteger(ts) && ts >= 0) ts = BigInt(ts);
  if (typeof ts !== "bigint" || ts < 0n) throw decodeError("envelope field timestampNs is invalid");
  const kind = typeof raw[1] === "number" ? FRAME_KINDS[raw[1]] : undefined;
  if (kind === undefined) throw decodeError("envelope field kind is unknown");
  let sequence: unknown = raw[2];
  if (typeof sequence === "bigint" && sequence <= BigInt(Number.MAX_SAFE_INTEGER)) {
    sequence = Number(sequence);
  }
  if (typeof sequence !== "number" || !Number.isSafeInteger(sequence) || sequence < 0) {
    throw decodeError("envelope field sequence is invalid");
  }
  const envelope: Envelope = {
    version,
    kind,
    messageId: fieldString(raw[3], "messageId", true)!,
    from: fieldString(raw[4], "from", true)!,
    to: fieldString(raw[5], "to", true)!,
    sequence,
    timestampNs: ts,
  };
  const channel = fieldString(raw[6] ?? null, "channel", false);
  if (channel !== undefined) envelope.channel = channel;
  const correlationId = fieldString(raw[7] ?? null, "correlationId", false);
  if (correlationId !== undefined) envelope.correlationId = correlationId;
  const replyTo = fieldString(raw[8] ?? null, "replyTo", false);
  if (replyTo !== undefined) envelope.replyTo = replyTo;
  const trace = raw[9] ?? null;
  if (trace !== null) {
    if (!Array.isArray(trace) || trace.length < 1 || trace.length > 2) {
      throw decodeError("envelope field trace is invalid");
    }
    const traceparent = fieldString(trace[0], "trace.traceparent", true)!;
    const tracestate = fieldString(trace[1] ?? null, "trace.tracestate", false);
    envelope.trace = tracestate === undefined ? { traceparent } : { traceparent, tracestate };
  }
  return envelope;
}

/** Decodes and validates a message from `view[start, end)`: a plain body or a plaintext. */
export function decodeMessage(
  bytes: Uint8Array,
  start: number,
  end: number,
  limits: DecodeLimits,
  copyBinaries: boolean,
): Message {
  scanMsgpack(bytes, start, end, bodyRules(limits));
  let raw: unknown;
  try {
    raw = (copyBinaries ? payloadUnpackr : payloadUnpackrNoCopy).unpack(bytes, { start, end });
  } catch (e) {
    throw decodeError("message is not valid msgpack", e);
  }
  if (!Array.isArray(raw) || raw.length < 2 || raw.length > 3) {
    throw decodeError("message is not an array of 2 or 3 fields");
  }
  const kind = typeof raw[0] === "number" ? PAYLOAD_KINDS[raw[0]] : undefined;
  if (kind === undefined) throw decodeError("message kind is unknown");
  const payload: unknown = raw[1];
  if (kind === PayloadKind.BYTES && !(payload instanceof Uint8Array)) {
    throw decodeError("a bytes message does not carry binary");
  }
  if (kind === PayloadKind.ERROR) {
    try {
      checkErrorInfo(payload);
    } catch {
      throw decodeError("an error message does not carry an ErrorInfo");
    }
  }
  const message: Message = { kind, payload };
  if (raw.length === 3) {
    const meta: unknown = raw[2];
    if (!isPlainObject(meta)) throw decodeError("message meta is not a map");
    for (const key in meta) {
      if (typeof meta[key] !== "string") throw decodeError("message meta values must be strings");
    }
    message.meta = meta as Record<string, string>;
  }
  return message;
}

// Anything but a TroupeError escaping a decoder is a bug here; the contract still holds.
export function guardDecode(e: unknown): never {
  if (e instanceof TroupeError) throw e;
  throw decodeError("unexpected failure while decoding", e);
}

/**
 * Decodes a plain frame. On any input it returns a valid Frame or throws a TroupeError:
 * DECODE_ERROR, LIMIT_EXCEEDED, UNSUPPORTED_VERSION, or CRYPTO_ERROR for a sealed frame.
 * Binary payload values are copies, independent of `bytes`.
 */
export function decodeFrame(bytes: Uint8Array, limits: DecodeLimits = DEFAULT_LIMITS): Frame {
  try {
    assertFrameInput(bytes, limits);
    const head = readFrameHead(bytes);
    if (head.sealed) {
      throw new TroupeError(
        ErrorCode.CRYPTO_ERROR,
        "frame is sealed: use openFrame with the channel key",
      );
    }
    const view = plainView(bytes);
    const envelope = decodeEnvelope(view, FRAME_HEADER_BYTES, head.envelopeEnd, head.version);
    const message = decodeMessage(view, head.envelopeEnd, view.length, limits, true);
    return { envelope, message };
  } catch (e) {
    guardDecode(e);
  }
}

/**
 * Reads the envelope of a plain or sealed frame without touching the body, for routing. For a
 * sealed frame the envelope is not yet authenticated: route on it, trust it only after openFrame.
 */
export function peekEnvelope(
  bytes: Uint8Array,
  limits: DecodeLimits = DEFAULT_LIMITS,
): { envelope: Envelope; sealed: boolean } {
  try {
    assertFrameInput(bytes, limits);
    const head = readFrameHead(bytes);
    const envelope = decodeEnvelope(
      plainView(bytes),
      FRAME_HEADER_BYTES,
      head.envelopeEnd,
      head.version,
    );
    return { envelope, sealed: head.sealed };
  } catch (e) {
    guardDecode(e);
  }
}
