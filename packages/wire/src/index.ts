/** @troupe/wire — frames, msgpack codec with limits, channel crypto, ids and error codes. */

export { decodeFrame, encodeFrame, peekEnvelope } from "./codec.js";
export {
  CHANNEL_KEY_BYTES,
  type ChannelKeyDerivation,
  deriveChannelKey,
  generateChannelKey,
  generateKeyPair,
  isKeyName,
  KEY_CHANNEL_PREFIX,
  type KeyPair,
  keyChannel,
  keyNameOf,
  openFrame,
  sealFrame,
} from "./crypto.js";
export * from "./errors.js";
export * from "./frame.js";
export * from "./ids.js";
export {
  createSequenceCounter,
  createSequenceWindow,
  type SequenceAcceptance,
  type SequenceCounter,
  type SequenceCounterOptions,
  type SequenceGap,
  type SequenceWindow,
  type SequenceWindowOptions,
} from "./sequence.js";
