/** Identities: agent ids (32-byte hash of type and key), shards, message ids. */
import { randomBytes } from "node:crypto";
import { sha256 } from "@noble/hashes/sha2.js";
import { ErrorCode, TroupeError } from "./errors.js";

const encoder = new TextEncoder();
const AGENT_ID_DOMAIN = encoder.encode("troupe/agent-id/v1");

/** Agent types are identifiers; keys may hold any character (they are encoded in subjects). */
const TYPE_PATTERN = /^[a-z][a-z0-9_-]{0,62}$/;
const MAX_KEY_BYTES = 256;

export function validateAgentType(type: string): void {
  if (typeof type !== "string" || !TYPE_PATTERN.test(type)) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `invalid agent type ${JSON.stringify(type)}: use 1-63 characters of a-z, 0-9, '-' or '_', starting with a letter`,
    );
  }
}

export function validateAgentKey(key: string): void {
  if (typeof key !== "string" || key.length === 0 || encoder.encode(key).length > MAX_KEY_BYTES) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `invalid agent key ${JSON.stringify(key)}: a key is 1-${MAX_KEY_BYTES} bytes of UTF-8`,
    );
  }
}

/** `type/key` — the agent's address. The key is everything after the first slash. */
export function agentAddress(type: string, key: string): string {
  validateAgentType(type);
  validateAgentKey(key);
  return `${type}/${key}`;
}

export function parseAgentAddress(address: string): { type: string; key: string } {
  const slash = typeof address === "string" ? address.indexOf("/") : -1;
  if (slash <= 0) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `invalid agent address ${JSON.stringify(address)}: expected "type/key"`,
    );
  }
  const type = address.slice(0, slash);
  const key = address.slice(slash + 1);
  validateAgentType(type);
  validateAgentKey(key);
  return { type, key };
}

/** AgentId = SHA-256(domain ‖ len(type) ‖ type ‖ key): 32 bytes, unambiguous. */
export function agentId(type: string, key: string): Uint8Array {
  validateAgentType(type);
  validateAgentKey(key);
  const t = encoder.encode(type);
  const k = encoder.encode(key);
  const buf = new Uint8Array(AGENT_ID_DOMAIN.length + 1 + t.length + k.length);
  buf.set(AGENT_ID_DOMAIN, 0);
  buf[AGENT_ID_DOMAIN.length] = t.length;
  buf.set(t, AGENT_ID_DOMAIN.length + 1);
  buf.set(k, AGENT_ID_DOMAIN.length + 1 + t.length);
  return sha256(buf);
}

/** Shard = AgentId (as a big-endian 256-bit integer) mod shardCount. */
export function shardOf(id: Uint8Array, shardCount: number): number {
  if (!Number.isInteger(shardCount) || shardCount < 1 || shardCount > 65_536) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `shard count must be 1..65536, got ${shardCount}`,
    );
  }
  let r = 0;
  for (const b of id) r = (r * 256 + b) % shardCount;
  return r;
}

export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

export function fromHex(hex: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})*$/i.test(hex)) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "not a hex string");
  }
  return new Uint8Array(Buffer.from(hex, "hex"));
}

// Random ids come from a pooled buffer: one randomBytes call per 256 ids keeps it cheap.
const POOL_IDS = 256;
let pool = Buffer.alloc(0);
let poolOffset = 0;

/** A fresh random message id: 16 random bytes, base64url (22 characters). */
export function newMessageId(): string {
  if (poolOffset >= pool.length) {
    pool = randomBytes(16 * POOL_IDS);
    poolOffset = 0;
  }
  const id = pool.toString("base64url", poolOffset, poolOffset + 16);
  poolOffset += 16;
  return id;
}

/**
 * The id of the n-th message an agent emits while handling input `inputId`. Deterministic,
 * so a re-run after a crash produces the same ids and JetStream dedup drops the repeats.
 */
export function deriveMessageId(inputId: string, n: number): string {
  const input = encoder.encode(`troupe/derived/v1\u0000${inputId}\u0000${n}`);
  return Buffer.from(sha256(input).subarray(0, 16)).toString("base64url");
}
