/** Channel crypto: frames sealed with XChaCha20-Poly1305, channel keys from X25519 + HKDF-SHA-256. */
import { createCipheriv, createDecipheriv, getCiphers, randomFillSync } from "node:crypto";
import { createRequire } from "node:module";
import { hchacha, xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { x25519 } from "@noble/curves/ed25519.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import {
  allocateFrame,
  assertFrameInput,
  assertFrameSize,
  decodeEnvelope,
  decodeMessage,
  FLAG_SEALED,
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  guardDecode,
  NONCE_BYTES,
  packFrame,
  plainView,
  readEnvelopeLength,
  releaseLargeScratch,
  TAG_BYTES,
  writeFrameHead,
} from "./codec.js";
import { ErrorCode, TroupeError } from "./errors.js";
import { DEFAULT_LIMITS, type DecodeLimits, type Frame, WIRE_VERSION } from "./frame.js";

export const CHANNEL_KEY_BYTES = 32;

/** One XChaCha20-Poly1305 implementation (draft-irtf-cfrg-xchacha-03 AEAD_XChaCha20_Poly1305). */
export interface XChaCha20Poly1305 {
  readonly name: string;
  /** Writes ciphertext ‖ tag (plaintext.length + 16 bytes) into `out` at `offset`. */
  sealInto(
    key: Uint8Array,
    nonce: Uint8Array,
    aad: Uint8Array,
    plaintext: Uint8Array,
    out: Uint8Array,
    offset: number,
  ): void;
  /** Returns the plaintext of ciphertext ‖ tag; throws (any error) when authentication fails. */
  open(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array): Uint8Array;
  /**
   * True when `open` returns a view of pooled memory (shared with other allocations): what is
   * decoded from it must not keep views of it. Otherwise the plaintext is the caller's alone.
   */
  readonly pooledPlaintext?: boolean;
}

/** The reference: @noble/ciphers end to end. */
export const nobleXChaCha20Poly1305: XChaCha20Poly1305 = {
  name: "noble",
  sealInto(key, nonce, aad, plaintext, out, offset) {
    // noble's output parameter must be 4-byte aligned, which a frame offset rarely is.
    out.set(xchacha20poly1305(key, nonce, aad).encrypt(plaintext), offset);
  },
  open(key, nonce, aad, sealed) {
    return xchacha20poly1305(key, nonce, aad).decrypt(sealed);
  },
};

// HChaCha20 takes its inputs as 32-bit words in the byte order of the host (noble swaps on
// big-endian hosts), so the constants are a word view of the ASCII bytes, as noble's own are.
const SIGMA = new Uint32Array(Uint8Array.from(new TextEncoder().encode("expand 32-byte k")).buffer);
// Scratch reused across calls (everything here is synchronous); key material is wiped after use.
const keyWords = new Uint32Array(8);
const keyWordBytes = new Uint8Array(keyWords.buffer);
const nonceWords = new Uint32Array(4);
const nonceWordBytes = new Uint8Array(nonceWords.buffer);
const subkeyWords = new Uint32Array(8);
const subkey = new Uint8Array(subkeyWords.buffer);
/** ChaCha20-Poly1305 IETF nonce: 4 zero bytes ‖ the last 8 bytes of the 24-byte nonce. */
const ietfNonce = new Uint8Array(12);

function deriveSubkey(key: Uint8Array, nonce: Uint8Array): void {
  keyWordBytes.set(key);
  for (let i = 0; i < 16; i++) nonceWordBytes[i] = nonce[i]!;
  hchacha(SIGMA, keyWords, nonceWords, subkeyWords);
  for (let i = 0; i < 8; i++) ietfNonce[4 + i] = nonce[16 + i]!;
  keyWords.fill(0);
}

/**
 * XChaCha20-Poly1305 as the draft defines it — HChaCha20 subkey, then ChaCha20-Poly1305 (RFC
 * 8439) — with the subkey from noble's HChaCha and the AEAD from node:crypto (OpenSSL).
 */
export const nodeXChaCha20Poly1305: XChaCha20Poly1305 = {
  name: "node:crypto+noble-hchacha",
  sealInto(key, nonce, aad, plaintext, out, offset) {
    deriveSubkey(key, nonce);
    try {
      const cipher = createCipheriv("chacha20-poly1305", subkey, ietfNonce, {
        authTagLength: TAG_BYTES,
      });
      cipher.setAAD(aad, { plaintextLength: plaintext.length });
      const head = cipher.update(plaintext);
      out.set(head, offset);
      const tail = cipher.final();
      if (tail.length > 0) out.set(tail, offset + head.length);
      out.set(cipher.getAuthTag(), offset + plaintext.length);
    } finally {
      subkey.fill(0);
    }
  },
  open(key, nonce, aad, sealed) {
    const ciphertextLength = sealed.length - TAG_BYTES;
    if (ciphertextLength < 0) throw new Error("sealed data shorter than its tag");
    deriveSubkey(key, nonce);
    try {
      const decipher = createDecipheriv("chacha20-poly1305", subkey, ietfNonce, {
        authTagLength: TAG_BYTES,
      });
      decipher.setAAD(aad, { plaintextLength: ciphertextLength });
      decipher.setAuthTag(sealed.subarray(ciphertextLength));
      const head = decipher.update(sealed.subarray(0, ciphertextLength));
      const tail = decipher.final(); // throws when the tag does not verify
      return tail.length === 0 ? head : Buffer.concat([head, tail]);
    } finally {
      subkey.fill(0);
    }
  },
};

/** What is used of sodium-native: libsodium's crypto_aead_xchacha20poly1305_ietf. */
interface Libsodium {
  crypto_aead_xchacha20poly1305_ietf_encrypt(
    c: Uint8Array,
    m: Uint8Array,
    ad: Uint8Array,
    nsec: null,
    npub: Uint8Array,
    k: Uint8Array,
  ): number;
  crypto_aead_xchacha20poly1305_ietf_decrypt(
    m: Uint8Array,
    nsec: null,
    c: Uint8Array,
    ad: Uint8Array,
    npub: Uint8Array,
    k: Uint8Array,
  ): number;
}

/** sodium-native's prebuilt addon, or why it cannot load here (no prebuild for the platform). */
function loadLibsodium(): Libsodium | Error {
  try {
    return createRequire(import.meta.url)("sodium-native") as Libsodium;
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  }
}

const libsodium = loadLibsodium();

/**
 * libsodium (sodium-native) when its addon loads on this platform: written straight into the
 * frame, no cipher object per call. Undefined where it does not load.
 */
export const libsodiumXChaCha20Poly1305: XChaCha20Poly1305 | undefined =
  libsodium instanceof Error
    ? undefined
    : {
        name: "libsodium",
        sealInto(key, nonce, aad, plaintext, out, offset) {
          libsodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            out.subarray(offset, offset + plaintext.length + TAG_BYTES),
            plaintext,
            aad,
            null,
            nonce,
            key,
          );
        },
        // a standalone ArrayBuffer per plaintext showed in profiles of a sealed worker: pooled
        // memory instead, and binaries in the message are copied out of it
        pooledPlaintext: true,
        open(key, nonce, aad, sealed) {
          if (sealed.length < TAG_BYTES) throw new Error("sealed data shorter than its tag");
          const plaintext = allocateFrame(sealed.length - TAG_BYTES);
          libsodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            plaintext,
            null,
            sealed,
            aad,
            nonce,
            key,
          );
          return plaintext;
        },
      };

/** The environment variable that picks the implementation: libsodium, node or noble. */
export const AEAD_ENV = "TROUPE_AEAD";

/*
 * The default is libsodium where sodium-native's addon loads (prebuilds for Linux, macOS and
 * Windows on x64 and arm64), else the node:crypto hybrid where this Node has
 * ChaCha20-Poly1305 (OpenSSL builds without it, e.g. FIPS, fall back to noble). Measured with
 * bench/src/crypto.ts on the 2-core build machine (Node 20.20, shared and noisy), seal + open
 * of 256 B with 150 B of associated data:
 *   noble xchacha20poly1305        52,000-55,000 ops/s
 *   node:crypto + noble hchacha    98,000-118,000 ops/s  (about 2.1x; most of it is OpenSSL
 *                                  building a cipher context per call)
 *   libsodium (sodium-native)      see docs/benchmarks.md
 * All give byte-identical output: test/crypto.test.ts checks the draft's A.3.1 vector,
 * Wycheproof vectors and random inputs against each other. TROUPE_AEAD=libsodium|node|noble
 * picks one (an operator's way out should the addon misbehave); `chooseAead` throws
 * CONFIG_ERROR for a choice it cannot honour.
 */
export function chooseAead(choice: string | undefined): XChaCha20Poly1305 {
  const node = getCiphers().includes("chacha20-poly1305") ? nodeXChaCha20Poly1305 : undefined;
  switch (choice) {
    case undefined:
    case "":
      return libsodiumXChaCha20Poly1305 ?? node ?? nobleXChaCha20Poly1305;
    case "libsodium":
      if (libsodiumXChaCha20Poly1305 === undefined) {
        throw new TroupeError(
          ErrorCode.CONFIG_ERROR,
          `${AEAD_ENV}=libsodium, but sodium-native does not load here: ${(libsodium as Error).message}`,
        );
      }
      return libsodiumXChaCha20Poly1305;
    case "node":
      if (node === undefined) {
        throw new TroupeError(
          ErrorCode.CONFIG_ERROR,
          `${AEAD_ENV}=node, but this Node's OpenSSL has no chacha20-poly1305`,
        );
      }
      return node;
    case "noble":
      return nobleXChaCha20Poly1305;
    default:
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `${AEAD_ENV} must be libsodium, node or noble (or unset), got ${JSON.stringify(choice)}`,
      );
  }
}

/**
 * What seals and opens frames: TROUPE_AEAD's choice, or the automatic one when it is unset or
 * cannot be honoured (a runtime given channel keys refuses that at start: see Sealing).
 */
export const defaultXChaCha20Poly1305: XChaCha20Poly1305 = (() => {
  try {
    return chooseAead(process.env[AEAD_ENV]);
  } catch {
    return chooseAead(undefined);
  }
})();

// Nonces come from a pooled buffer: one randomFillSync per 256 frames instead of one per frame
// (a call costs about as much as sealing 256 bytes). They are public values, so pooling is safe.
const NONCE_POOL_BYTES = NONCE_BYTES * 256;
const noncePool = new Uint8Array(NONCE_POOL_BYTES);
let noncePoolOffset = NONCE_POOL_BYTES;

function writeNonce(out: Uint8Array, offset: number): void {
  if (noncePoolOffset >= NONCE_POOL_BYTES) {
    randomFillSync(noncePool);
    noncePoolOffset = 0;
  }
  for (let i = 0; i < NONCE_BYTES; i++) out[offset + i] = noncePool[noncePoolOffset + i]!;
  noncePoolOffset += NONCE_BYTES;
}

function assertKey(key: unknown, name = "key"): asserts key is Uint8Array {
  if (!(key instanceof Uint8Array) || key.length !== CHANNEL_KEY_BYTES) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `${name} must be a Uint8Array of ${CHANNEL_KEY_BYTES} bytes`,
    );
  }
}

function cryptoError(message: string, cause?: unknown): TroupeError {
  return new TroupeError(
    ErrorCode.CRYPTO_ERROR,
    message,
    cause === undefined ? undefined : { cause },
  );
}

/**
 * Encodes and seals a frame: the message is encrypted with a random 24-byte nonce and the whole
 * header and envelope are the associated data, so no routing field can be altered unnoticed.
 * Throws INVALID_ARGUMENT or LIMIT_EXCEEDED as encodeFrame does (the limit covers the sealed size).
 */
export function sealFrame(
  frame: Frame,
  key: Uint8Array,
  limits: DecodeLimits = DEFAULT_LIMITS,
): Uint8Array {
  assertKey(key);
  const parts = packFrame(frame, limits);
  const total =
    FRAME_HEADER_BYTES + parts.envelope.size + NONCE_BYTES + parts.message.length + TAG_BYTES;
  assertFrameSize(total, limits);
  const out = allocateFrame(total);
  const bodyStart = writeFrameHead(out, FLAG_SEALED, parts.envelope);
  writeNonce(out, bodyStart);
  try {
    defaultXChaCha20Poly1305.sealInto(
      key,
      out.subarray(bodyStart, bodyStart + NONCE_BYTES),
      out.subarray(0, bodyStart),
      parts.message,
      out,
      bodyStart + NONCE_BYTES,
    );
  } catch (e) {
    throw cryptoError("sealing failed", e);
  }
  releaseLargeScratch(parts.message);
  return out;
}

/**
 * Authenticates and decodes a sealed frame. Until authentication succeeds nothing in the frame
 * is trusted beyond the bounds needed to split it, so any altered bit gives CRYPTO_ERROR; after
 * it, an unknown version gives UNSUPPORTED_VERSION and a bad shape DECODE_ERROR. Oversized
 * input gives LIMIT_EXCEEDED first; a key that is not 32 bytes gives INVALID_ARGUMENT.
 */
export function openFrame(
  bytes: Uint8Array,
  key: Uint8Array,
  limits: DecodeLimits = DEFAULT_LIMITS,
): Frame {
  assertKey(key);
  try {
    assertFrameInput(bytes, limits);
    if (bytes.length < FRAME_HEADER_BYTES + 1 + NONCE_BYTES + TAG_BYTES) {
      throw cryptoError("frame too short to be sealed");
    }
    if (bytes[0] !== FRAME_MAGIC) throw cryptoError("not a Troupe frame (bad magic byte)");
    if (bytes[2] !== FLAG_SEALED)
      throw cryptoError("frame is not sealed (or its flags are altered)");
    const envelopeEnd = FRAME_HEADER_BYTES + readEnvelopeLength(bytes);
    if (envelopeEnd <= FRAME_HEADER_BYTES || envelopeEnd > bytes.length - NONCE_BYTES - TAG_BYTES) {
      throw cryptoError("envelope length does not fit the frame");
    }
    const bodyStart = envelopeEnd + NONCE_BYTES;
    let plaintext: Uint8Array;
    try {
      plaintext = defaultXChaCha20Poly1305.open(
        key,
        bytes.subarray(envelopeEnd, bodyStart),
        bytes.subarray(0, envelopeEnd),
        bytes.subarray(bodyStart),
      );
    } catch (e) {
      throw cryptoError("frame failed authentication (wrong key, or altered in transit)", e);
    }
    // Authenticated: the sender wrote every byte from here on.
    const version = bytes[1]!;
    if (version !== WIRE_VERSION) {
      throw new TroupeError(
        ErrorCode.UNSUPPORTED_VERSION,
        `frame version ${version} is not supported (this peer speaks ${WIRE_VERSION})`,
        { details: { version, supported: [WIRE_VERSION] } },
      );
    }
    const envelope = decodeEnvelope(plainView(bytes), FRAME_HEADER_BYTES, envelopeEnd, version);
    const message = decodeMessage(
      plainView(plaintext),
      0,
      plaintext.length,
      limits,
      defaultXChaCha20Poly1305.pooledPlaintext === true,
    );
    return { envelope, message };
  } catch (e) {
    guardDecode(e);
  }
}

/** A fresh random 32-byte channel key. */
export function generateChannelKey(): Uint8Array {
  return randomFillSync(new Uint8Array(CHANNEL_KEY_BYTES));
}

export interface KeyPair {
  /** X25519 private key, 32 bytes. Keep it secret. */
  privateKey: Uint8Array;
  /** X25519 public key, 32 bytes. */
  publicKey: Uint8Array;
}

/** A fresh X25519 key pair for deriving channel keys. */
export function generateKeyPair(): KeyPair {
  const { secretKey, publicKey } = x25519.keygen();
  return { privateKey: secretKey, publicKey };
}

export interface ChannelKeyDerivation {
  /** This side's X25519 private key. */
  privateKey: Uint8Array;
  /** The other side's X25519 public key. */
  peerPublicKey: Uint8Array;
  /** HKDF salt; both sides must use the same one (omitted = RFC 5869's zero salt). */
  salt?: Uint8Array;
  /** HKDF info: what the key is for, e.g. `troupe/channel/<channel id>`. Same on both sides. */
  info: string | Uint8Array;
}

/**
 * Derives a 32-byte channel key: HKDF-SHA-256(ikm = X25519(privateKey, peerPublicKey), salt,
 * info). Both sides derive the same key from their own private key and the other's public key.
 * A peer key of low order (all-zero shared secret) gives CRYPTO_ERROR.
 */
export function deriveChannelKey(derivation: ChannelKeyDerivation): Uint8Array {
  if (typeof derivation !== "object" || derivation === null) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "deriveChannelKey needs an options object");
  }
  const { privateKey, peerPublicKey, salt, info } = derivation;
  assertKey(privateKey, "privateKey");
  assertKey(peerPublicKey, "peerPublicKey");
  if (salt !== undefined && !(salt instanceof Uint8Array)) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "salt must be a Uint8Array or undefined");
  }
  if (typeof info !== "string" && !(info instanceof Uint8Array)) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "info must be a string or a Uint8Array");
  }
  let shared: Uint8Array;
  try {
    shared = x25519.getSharedSecret(privateKey, peerPublicKey);
  } catch (e) {
    throw cryptoError("X25519 failed: the peer public key is invalid or of low order", e);
  }
  try {
    // noble already refuses this; the check stays so the guarantee does not rest on a dependency.
    let any = 0;
    for (let i = 0; i < shared.length; i++) any |= shared[i]!;
    if (any === 0) throw cryptoError("X25519 shared secret is all zero (low-order peer key)");
    const infoBytes = typeof info === "string" ? new TextEncoder().encode(info) : info;
    return hkdf(sha256, shared, salt, infoBytes, CHANNEL_KEY_BYTES);
  } finally {
    shared.fill(0);
  }
}

/**
 * The envelope `channel` of an agent frame sealed with a named key a runtime was given
 * (rather than a key of a channel the channel API established): `key:<name>`. Channel-API
 * channel ids are base64url message ids, which never hold a `:`, so the two cannot collide.
 */
export const KEY_CHANNEL_PREFIX = "key:";

/** Key names: 1-64 characters of `A-Z a-z 0-9 . _ -`, not starting with a dot. */
const KEY_NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/;

/** True for a usable key name (what `keyChannel` takes). */
export function isKeyName(name: unknown): name is string {
  return typeof name === "string" && KEY_NAME.test(name);
}

/** `key:<name>`, the channel of frames sealed with key `name`. INVALID_ARGUMENT for a bad name. */
export function keyChannel(name: string): string {
  if (!isKeyName(name)) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `invalid key name ${JSON.stringify(name)}: use 1-64 characters of A-Z a-z 0-9 . _ -, not starting with a dot`,
    );
  }
  return KEY_CHANNEL_PREFIX + name;
}

/** The key name a `key:<name>` channel names, or undefined for any other channel. */
export function keyNameOf(channel: string | undefined): string | undefined {
  return channel?.startsWith(KEY_CHANNEL_PREFIX)
    ? channel.slice(KEY_CHANNEL_PREFIX.length)
    : undefined;
}
