/** Internals shared with sibling packages, tests and benchmarks. Not a stable API. */

export {
  FLAG_SEALED,
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  MAX_ENVELOPE_BYTES,
  MAX_ENVELOPE_FIELD_LENGTH,
  NONCE_BYTES,
  TAG_BYTES,
} from "./codec.js";
export {
  AEAD_ENV,
  chooseAead,
  defaultXChaCha20Poly1305,
  libsodiumXChaCha20Poly1305,
  nobleXChaCha20Poly1305,
  nodeXChaCha20Poly1305,
  type XChaCha20Poly1305,
} from "./crypto.js";
export * from "./index.js";
export { assertLimits, type ScanRules, scanMsgpack } from "./limits.js";
