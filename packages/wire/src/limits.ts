/** Limit enforcement on both sides of the codec: a msgpack byte scanner and a payload value check. */
import { ErrorCode, TroupeError } from "./errors.js";
import type { DecodeLimits } from "./frame.js";

/** The rules one msgpack region is held to (derived from DecodeLimits per region). */
export interface ScanRules {
  /** Nested arrays/maps allowed, counting the outermost one. */
  maxDepth: number;
  maxCollectionLength: number;
  maxStringBytes: number;
  /** Every msgpack value counts, map keys included. */
  maxTotalItems: number;
  /** Accept msgpackr's `undefined` (fixext1 type 0, data 0) — the only extension ever accepted. */
  allowUndefined: boolean;
}

function malformed(message: string): TroupeError {
  return new TroupeError(ErrorCode.DECODE_ERROR, `malformed msgpack: ${message}`);
}

function exceeded(message: string, details?: Record<string, unknown>): TroupeError {
  return new TroupeError(
    ErrorCode.LIMIT_EXCEEDED,
    message,
    details === undefined ? undefined : { details },
  );
}

function assertPositiveInteger(name: string, value: unknown): void {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `limits.${name} must be a positive safe integer, got ${String(value)}`,
    );
  }
}

const checkedLimits = new WeakSet<DecodeLimits>();

/**
 * Validates a caller's limits once per object, so a typo cannot silently disable a limit.
 * Limits objects are read as immutable from then on (DEFAULT_LIMITS is frozen): make a new
 * object to change them.
 */
export function assertLimits(limits: DecodeLimits): void {
  if (checkedLimits.has(limits)) return;
  if (typeof limits !== "object" || limits === null) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "limits must be a DecodeLimits object");
  }
  assertPositiveInteger("maxFrameBytes", limits.maxFrameBytes);
  assertPositiveInteger("maxDepth", limits.maxDepth);
  assertPositiveInteger("maxCollectionLength", limits.maxCollectionLength);
  assertPositiveInteger("maxStringBytes", limits.maxStringBytes);
  assertPositiveInteger("maxTotalItems", limits.maxTotalItems);
  checkedLimits.add(limits);
}

// The scanner's stack lives in module scope and is reused: scanning is synchronous and never
// re-entered, so one pair of arrays serves every call without allocating.
let remaining = new Float64Array(64);
let isMapLevel = new Uint8Array(64);

function reserveStack(levels: number): void {
  if (levels <= remaining.length) return;
  const size = Math.max(levels, remaining.length * 2);
  remaining = new Float64Array(size);
  isMapLevel = new Uint8Array(size);
}

function u16(b: Uint8Array, p: number): number {
  return (b[p]! << 8) | b[p + 1]!;
}

function u32(b: Uint8Array, p: number): number {
  return b[p]! * 0x1000000 + ((b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!);
}

/** "__proto__" as bytes: such a key is refused outright rather than trusting the decoder's rename. */
const PROTO_KEY = [0x5f, 0x5f, 0x70, 0x72, 0x6f, 0x74, 0x6f, 0x5f, 0x5f];

function isProtoKey(b: Uint8Array, p: number): boolean {
  for (let i = 0; i < 9; i++) if (b[p + i] !== PROTO_KEY[i]) return false;
  return true;
}

/**
 * Walks exactly one msgpack value in `b[start, end)` without decoding or allocating, and throws
 * unless it is well formed, inside `rules`, and ends exactly at `end`. Map keys must be strings
 * (other than `__proto__`). Limit checks come before the matching bounds checks, so a header
 * claiming 2^32-1 elements reports LIMIT_EXCEEDED rather than a truncation.
 */
export function scanMsgpack(b: Uint8Array, start: number, end: number, rules: ScanRules): void {
  reserveStack(rules.maxDepth + 2);
  let pos = start;
  let depth = 0;
  let items = 0;
  for (;;) {
    if (pos >= end) throw malformed(`value truncated at offset ${pos - start}`);
    if (++items > rules.maxTotalItems) {
      throw exceeded(`more than ${rules.maxTotalItems} msgpack values`, {
        limit: "maxTotalItems",
      });
    }
    const t = b[pos]!;
    // `& 1` keeps the parity of any integer below 2^53, and is far cheaper than `% 2` on a double.
    const isKey = depth > 0 && isMapLevel[depth] === 1 && (remaining[depth]! & 1) === 0;
    let header = 0; // bytes before a string/bin body, or before collection children
    let length = -1; // string/bin byte length
    let count = -1; // collection element count
    let isMap = false;
    if (t < 0x80 || t >= 0xe0) {
      if (isKey) throw malformed("map key is not a string");
      pos += 1;
    } else if (t < 0x90) {
      isMap = true;
      count = t & 0x0f;
      header = 1;
    } else if (t < 0xa0) {
      count = t & 0x0f;
      header = 1;
    } else if (t < 0xc0) {
      length = t & 0x1f;
      header = 1;
    } else {
      if (isKey && t !== 0xd9 && t !== 0xda && t !== 0xdb) {
        throw malformed("map key is not a string");
      }
      let fixed = 0; // total size of a fixed-width value
      switch (t) {
        case 0xc0:
        case 0xc2:
        case 0xc3:
          fixed = 1;
          break;
        case 0xc1:
          throw malformed("reserved byte 0xc1");
        case 0xcc:
        case 0xd0:
          fixed = 2;
          break;
        case 0xcd:
        case 0xd1:
          fixed = 3;
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          fixed = 5;
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          fixed = 9;
          break;
        case 0xc4:
        case 0xd9:
          header = 2;
          break;
        case 0xc5:
        case 0xda:
        case 0xdc:
        case 0xde:
          header = 3;
          break;
        case 0xc6:
        case 0xdb:
        case 0xdd:
        case 0xdf:
          header = 5;
          break;
        case 0xd4:
          if (
            rules.allowUndefined &&
            pos + 3 <= end &&
            b[pos + 1] === 0x00 &&
            b[pos + 2] === 0x00
          ) {
            fixed = 3;
            break;
          }
          throw malformed(`unsupported extension type ${b[pos + 1] ?? "(truncated)"}`);
        default:
          // 0xc7-0xc9 and 0xd5-0xd8: extensions (dates, records, bundles…) are never accepted.
          throw malformed(`unsupported extension (token 0x${t.toString(16)})`);
      }
      if (fixed > 0) {
        if (pos + fixed > end) throw malformed(`value truncated at offset ${pos - start}`);
        pos += fixed;
      } else {
        if (pos + header > end) throw malformed(`header truncated at offset ${pos - start}`);
        const n = header === 2 ? b[pos + 1]! : header === 3 ? u16(b, pos + 1) : u32(b, pos + 1);
        if (t === 0xdc || t === 0xdd) count = n;
        else if (t === 0xde || t === 0xdf) {
          count = n;
          isMap = true;
        } else length = n;
      }
    }
    if (length >= 0) {
      if (length > rules.maxStringBytes) {
        throw exceeded(`string or binary of ${length} bytes exceeds ${rules.maxStringBytes}`, {
          limit: "maxStringBytes",
        });
      }
      if (length > end - pos - header) {
        throw malformed(`string or binary of ${length} bytes runs past the end`);
      }
      if (isKey && length === 9 && isProtoKey(b, pos + header)) {
        throw malformed("map key __proto__ is not allowed");
      }
      pos += header + length;
    } else if (count >= 0) {
      if (isKey) throw malformed("map key is not a string");
      if (count > rules.maxCollectionLength) {
        throw exceeded(`collection of ${count} elements exceeds ${rules.maxCollectionLength}`, {
          limit: "maxCollectionLength",
        });
      }
      if (depth + 1 > rules.maxDepth) {
        throw exceeded(`nesting deeper than ${rules.maxDepth}`, { limit: "maxDepth" });
      }
      const slots = isMap ? count * 2 : count;
      // Every child takes at least one byte; a header claiming more cannot be honest.
      if (slots > end - pos - header) {
        throw malformed(`collection of ${count} elements runs past the end`);
      }
      pos += header;
      if (slots > 0) {
        depth++;
        remaining[depth] = slots;
        isMapLevel[depth] = isMap ? 1 : 0;
        continue;
      }
    }
    // One value is complete: close every collection it completes.
    for (;;) {
      if (depth === 0) {
        if (pos !== end) throw malformed(`${end - pos} trailing bytes after the value`);
        return;
      }
      const left = remaining[depth]! - 1;
      remaining[depth] = left;
      if (left > 0) break;
      depth--;
    }
  }
}

/** Running totals of a payload check (one object per encode). */
export interface PayloadBudget {
  items: number;
}

// Payload errors carry the path to the bad value in details.path; it is filled in while the
// error unwinds, so the success path never builds path strings.
function payloadError(code: ErrorCode, message: string, limit?: string): TroupeError {
  const details: Record<string, unknown> = { path: [] as string[] };
  if (limit !== undefined) details.limit = limit;
  return new TroupeError(code, message, { details });
}

function atSegment(e: unknown, segment: string): unknown {
  const path = e instanceof TroupeError ? e.details?.path : undefined;
  if (Array.isArray(path)) path.push(segment);
  return e;
}

/** "payload.a[2].b" from the segments collected while unwinding (innermost first). */
export function formatPayloadPath(e: TroupeError, root: string): string {
  const path = e.details?.path;
  if (!Array.isArray(path)) return root;
  let out = root;
  for (let i = path.length - 1; i >= 0; i--) out += path[i];
  return out;
}

const MIN_INT64 = -(2n ** 63n);
const MAX_UINT64 = 2n ** 64n - 1n;

function checkString(s: string, rules: ScanRules, what: string): void {
  // UTF-8 takes at most 3 bytes per UTF-16 unit; measure exactly only when that bound is too high.
  if (s.length * 3 > rules.maxStringBytes) {
    const bytes = s.length > rules.maxStringBytes ? s.length : Buffer.byteLength(s, "utf8");
    if (bytes > rules.maxStringBytes) {
      throw payloadError(
        ErrorCode.LIMIT_EXCEEDED,
        `${what} of ${bytes} bytes exceeds ${rules.maxStringBytes}`,
        "maxStringBytes",
      );
    }
  }
}

function countItem(budget: PayloadBudget, rules: ScanRules): void {
  if (++budget.items > rules.maxTotalItems) {
    throw payloadError(
      ErrorCode.LIMIT_EXCEEDED,
      `more than ${rules.maxTotalItems} msgpack values`,
      "maxTotalItems",
    );
  }
}

function checkCollectionLength(length: number, rules: ScanRules): void {
  if (length > rules.maxCollectionLength) {
    throw payloadError(
      ErrorCode.LIMIT_EXCEEDED,
      `collection of ${length} elements exceeds ${rules.maxCollectionLength}`,
      "maxCollectionLength",
    );
  }
}

/**
 * Checks, before packing, that a value is one the decoder will accept and give back unchanged:
 * null, undefined, booleans, numbers, strings, bigints in int64/uint64 range, Uint8Array, arrays
 * and plain objects, within `rules` (counted exactly as scanMsgpack counts the packed bytes).
 * Anything msgpackr would silently reshape (Map, Set, Date, RegExp, class instances, typed arrays
 * other than Uint8Array) or cannot carry (functions, symbols) is refused, so the sender learns at
 * once instead of a peer parking the frame. Depth is bounded, so cycles end as LIMIT_EXCEEDED.
 */
export function checkPayload(
  value: unknown,
  rules: ScanRules,
  budget: PayloadBudget,
  depth: number,
): void {
  countItem(budget, rules);
  switch (typeof value) {
    case "string":
      checkString(value, rules, "string");
      return;
    case "number":
    case "boolean":
    case "undefined":
      return;
    case "bigint":
      if (value < MIN_INT64 || value > MAX_UINT64) {
        throw payloadError(ErrorCode.INVALID_ARGUMENT, "bigint does not fit in 64 bits");
      }
      return;
    case "object": {
      if (value === null) return;
      if (value instanceof Uint8Array) {
        if (value.length > rules.maxStringBytes) {
          throw payloadError(
            ErrorCode.LIMIT_EXCEEDED,
            `binary of ${value.length} bytes exceeds ${rules.maxStringBytes}`,
            "maxStringBytes",
          );
        }
        return;
      }
      if (depth + 1 > rules.maxDepth) {
        throw payloadError(
          ErrorCode.LIMIT_EXCEEDED,
          `nesting deeper than ${rules.maxDepth}`,
          "maxDepth",
        );
      }
      if (Array.isArray(value)) {
        checkCollectionLength(value.length, rules);
        for (let i = 0; i < value.length; i++) {
          try {
            checkPayload(value[i], rules, budget, depth + 1);
          } catch (e) {
            throw atSegment(e, `[${i}]`);
          }
        }
        return;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) {
        const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
        throw payloadError(
          ErrorCode.INVALID_ARGUMENT,
          `${typeof name === "string" && name !== "" ? name : "non-plain object"} is not a payload value; use plain objects, arrays, Uint8Array and primitives`,
        );
      }
      const keys = Object.keys(value);
      checkCollectionLength(keys.length, rules);
      const record = value as Record<string, unknown>;
      for (const key of keys) {
        try {
          if (key === "__proto__") {
            throw payloadError(ErrorCode.INVALID_ARGUMENT, "key __proto__ is not allowed");
          }
          countItem(budget, rules);
          checkString(key, rules, "key");
          checkPayload(record[key], rules, budget, depth + 1);
        } catch (e) {
          throw atSegment(e, `.${key}`);
        }
      }
      return;
    }
    default:
      throw payloadError(
        ErrorCode.INVALID_ARGUMENT,
        `a ${typeof value} is not a payload value (msgpack cannot carry it)`,
      );
  }
}
