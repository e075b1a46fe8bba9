/**
 * Sealing of agent traffic: every agent frame a runtime sends is sealed with one named
 * channel key (envelope channel `key:<name>`), and frames it receives are opened with any of
 * the keys it was given, so keys can be rotated. Also reads a directory of key files (the
 * Kubernetes Secret the Helm chart mounts on workers).
 */
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import {
  CHANNEL_KEY_BYTES,
  type DecodeLimits,
  type Envelope,
  ErrorCode,
  type Frame,
  isKeyName,
  KEY_CHANNEL_PREFIX,
  keyNameOf,
  openFrame,
  peekEnvelope,
  sealFrame,
  TroupeError,
} from "@troupe/wire";
import { AEAD_ENV, chooseAead } from "@troupe/wire/internal";

export interface SealingConfig {
  /** The keys this runtime opens agent frames with, by name: 32 bytes each. */
  keys: Readonly<Record<string, Uint8Array>>;
  /**
   * The key every agent frame sent from this runtime is sealed with. Default: the only key;
   * required when there are several.
   */
  sealWith?: string;
}

function configError(message: string): TroupeError {
  return new TroupeError(ErrorCode.CONFIG_ERROR, message);
}

/** @internal A runtime's sealing keys, checked once; `seal` and `open` are per frame. */
export class Sealing {
  /** The name of the key frames are sealed with. */
  readonly sealWith: string;
  /** The envelope channel of sealed frames: `key:<sealWith>`. */
  readonly channel: string;
  readonly #key: Uint8Array;
  /** Keys by their channel (`key:<name>`): no string slicing per frame. */
  readonly #keys = new Map<string, Uint8Array>();
  readonly #limits: DecodeLimits;

  constructor(config: SealingConfig, limits: DecodeLimits) {
    if (typeof config !== "object" || config === null) {
      throw configError("sealing must be an object { keys, sealWith? }");
    }
    const { keys, sealWith } = config;
    if (typeof keys !== "object" || keys === null || Array.isArray(keys)) {
      throw configError("sealing.keys must be an object mapping key names to 32-byte keys");
    }
    for (const [name, key] of Object.entries(keys)) {
      if (!isKeyName(name)) {
        throw configError(
          `sealing.keys: invalid key name ${JSON.stringify(name)} (use 1-64 characters of A-Z a-z 0-9 . _ -, not starting with a dot)`,
        );
      }
      if (!(key instanceof Uint8Array) || key.length !== CHANNEL_KEY_BYTES) {
        const got = key instanceof Uint8Array ? `${key.length} bytes` : typeof key;
        throw configError(
          `sealing.keys.${name} must be a Uint8Array of ${CHANNEL_KEY_BYTES} bytes, got ${got}`,
        );
      }
      // a copy: the caller may wipe or reuse its buffer
      this.#keys.set(KEY_CHANNEL_PREFIX + name, new Uint8Array(key));
    }
    const names = this.names();
    if (names.length === 0) throw configError("sealing.keys holds no key");
    if (sealWith === undefined) {
      if (names.length > 1) {
        throw configError(
          `sealing has ${names.length} keys (${names.join(", ")}): say which one frames are sealed with (sealWith)`,
        );
      }
      this.sealWith = names[0]!;
    } else {
      if (typeof sealWith !== "string" || !this.#keys.has(KEY_CHANNEL_PREFIX + sealWith)) {
        throw configError(
          `sealing.sealWith ${JSON.stringify(sealWith)} is not one of the keys (${names.join(", ")})`,
        );
      }
      this.sealWith = sealWith;
    }
    // TROUPE_AEAD naming an implementation that is unknown or cannot load here: say so now
    chooseAead(process.env[AEAD_ENV]);
    this.channel = KEY_CHANNEL_PREFIX + this.sealWith;
    this.#key = this.#keys.get(this.channel)!;
    this.#limits = limits;
  }

  /** The key names, in the order given. */
  names(): string[] {
    return [...this.#keys.keys()].map((c) => c.slice(KEY_CHANNEL_PREFIX.length));
  }

  /**
   * Seals a frame with the `sealWith` key, its envelope naming that key. The frame itself is
   * left as it is (it may be in an outbox). Throws as sealFrame does (INVALID_ARGUMENT,
   * LIMIT_EXCEEDED).
   */
  seal(frame: Frame): { bytes: Uint8Array; envelope: Envelope; fresh?: boolean } {
    const e = frame.envelope;
    // written out rather than spread: one object shape for every sealed envelope keeps the
    // encoder's property reads monomorphic (the spread cost about 3.5 % of the sealed hot
    // path); `satisfies` makes a field added to Envelope a compile error here, not a loss
    const envelope = {
      version: e.version,
      kind: e.kind,
      messageId: e.messageId,
      from: e.from,
      to: e.to,
      channel: this.channel,
      sequence: e.sequence,
      timestampNs: e.timestampNs,
      correlationId: e.correlationId,
      replyTo: e.replyTo,
      trace: e.trace,
    } satisfies { [K in keyof Required<Envelope>]: Envelope[K] };
    const bytes = sealFrame({ envelope, message: frame.message }, this.#key, this.#limits);
    return { bytes, envelope };
  }

  /**
   * Opens sealed `bytes` whose (peeked) envelope is `envelope` with the key its channel
   * names. CRYPTO_ERROR when it names none of this runtime's keys or fails authentication.
   */
  open(bytes: Uint8Array, envelope: Envelope): Frame {
    const channel = envelope.channel;
    const key = channel === undefined ? undefined : this.#keys.get(channel);
    if (key === undefined) throw this.#unknownKey(envelope);
    return openFrame(bytes, key, this.#limits);
  }

  /**
   * Any stored frame (replay): sealed with one of the keys, opened; anything else (plain,
   * sealed with another key or on a channel of the channel API) refused with CRYPTO_ERROR, as
   * the open stage refused it when it arrived.
   */
  openStored(bytes: Uint8Array): Frame {
    const { envelope, sealed } = peekEnvelope(bytes, this.#limits);
    if (!sealed) throw notSealed(envelope);
    return this.open(bytes, envelope);
  }

  #unknownKey(envelope: Envelope): TroupeError {
    const name = keyNameOf(envelope.channel);
    const why =
      name === undefined
        ? envelope.channel === undefined
          ? "names no key"
          : `is on channel ${envelope.channel}, not sealed with a named key`
        : `is sealed with key "${name}", which this runtime does not have`;
    return new TroupeError(
      ErrorCode.CRYPTO_ERROR,
      `${describe(envelope)} ${why} (it opens frames sealed with: ${this.names().join(", ")})`,
      { details: { channel: envelope.channel ?? null, keys: this.names() } },
    );
  }
}

/** "a request from ~abc": a frame for a log line or an error message. */
export function describe(envelope: Pick<Envelope, "kind" | "from">): string {
  return `${envelope.kind === "error" || envelope.kind === "event" ? "an" : "a"} ${envelope.kind} from ${envelope.from}`;
}

/** CRYPTO_ERROR for a plain agent frame where agent traffic is sealed. */
export function notSealed(envelope: Pick<Envelope, "kind" | "from">): TroupeError {
  return new TroupeError(
    ErrorCode.CRYPTO_ERROR,
    `${describe(envelope)} is not sealed: agent frames are sealed here`,
  );
}

/**
 * Reads a directory of channel keys: one file per key, the file name being the key's name
 * (as a Kubernetes Secret mounted as a volume has it). A file holds the key as 32 raw bytes,
 * 64 hex digits or the base64 of 32 bytes (surrounding whitespace ignored in the text forms).
 * Entries whose names start with a dot (Kubernetes' `..data` links) and directories are
 * skipped. CONFIG_ERROR, naming the file, for a file that is not a key; for a missing or
 * empty directory too.
 */
export async function readChannelKeys(dir: string): Promise<Record<string, Uint8Array>> {
  let names: string[];
  try {
    const s = await stat(dir);
    if (!s.isDirectory()) throw configError(`channel keys: ${dir} is not a directory`);
    names = (await readdir(dir)).sort();
  } catch (e) {
    if (e instanceof TroupeError) throw e;
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `channel keys: cannot read the directory ${dir}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  const keys: [string, Uint8Array][] = [];
  for (const name of names) {
    if (name.startsWith(".")) continue;
    const path = join(dir, name);
    let content: Buffer;
    try {
      // stat follows links: a Secret's key files are links into its ..data directory
      if ((await stat(path)).isDirectory()) continue;
      content = await readFile(path);
    } catch (e) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `channel keys: cannot read ${path}: ${(e as Error).message}`,
        { cause: e },
      );
    }
    if (!isKeyName(name)) {
      throw configError(
        `channel keys: ${path}: ${JSON.stringify(name)} is not a usable key name (use 1-64 characters of A-Z a-z 0-9 . _ -)`,
      );
    }
    keys.push([name, parseChannelKey(content, path)]);
    content.fill(0);
  }
  if (keys.length === 0) throw configError(`channel keys: ${dir} holds no key files`);
  return Object.fromEntries(keys);
}

/**
 * The sealing configuration of a key directory (`readChannelKeys`) and the name of the key to
 * seal with (default: the only one). CONFIG_ERROR, before anything connects, when the
 * directory holds several keys and none is named, or not the one named.
 */
export async function readSealing(dir: string, sealWith?: string): Promise<SealingConfig> {
  const keys = await readChannelKeys(dir);
  const names = Object.keys(keys);
  if (sealWith === undefined) {
    if (names.length > 1) {
      throw configError(
        `channel keys: ${dir} holds ${names.length} keys (${names.join(", ")}): name the one agent frames are sealed with`,
      );
    }
    return { keys };
  }
  if (!names.includes(sealWith)) {
    throw configError(
      `channel keys: ${dir} has no key ${JSON.stringify(sealWith)} to seal with (it holds ${names.join(", ")})`,
    );
  }
  return { keys, sealWith };
}

const HEX_KEY = /^[0-9a-fA-F]{64}$/;
const BASE64_KEY = /^[A-Za-z0-9+/]{43}=?$|^[A-Za-z0-9_-]{43}=?$/;

/**
 * One key file's content: 32 raw bytes, or 64 hex digits, or the base64 (standard or URL
 * alphabet) of 32 bytes, whitespace around the text forms ignored. CONFIG_ERROR naming
 * `source` otherwise.
 */
export function parseChannelKey(content: Uint8Array, source: string): Uint8Array {
  if (content.length === CHANNEL_KEY_BYTES) return new Uint8Array(content);
  const text = Buffer.from(content.buffer, content.byteOffset, content.byteLength)
    .toString("latin1")
    .trim();
  if (HEX_KEY.test(text)) return new Uint8Array(Buffer.from(text, "hex"));
  if (BASE64_KEY.test(text)) {
    const key = new Uint8Array(
      Buffer.from(text, text.includes("_") || text.includes("-") ? "base64url" : "base64"),
    );
    if (key.length === CHANNEL_KEY_BYTES) return key;
  }
  throw configError(
    `channel keys: ${source} is not a key: expected 32 raw bytes, 64 hex digits or the base64 of 32 bytes (it has ${content.length} bytes)`,
  );
}
