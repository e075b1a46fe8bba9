/** Internals for sibling packages (coordinator, worker, CLI) and tests. Not a stable API. */

export { NatsBackendImpl } from "./backend.js";
export {
  ApiCode,
  apiCode,
  describeNatsError,
  isTransient,
  isWrongLastSequence,
  storageError,
  transportError,
} from "./errors.js";
export * from "./index.js";
export {
  ACK_WAIT_MS,
  AGE_UNIT_MS,
  CONFIG_KEY,
  DEFAULT_DUPLICATE_WINDOW_MS,
  DEFAULT_INBOX_MAX_AGE_MS,
  DEFAULT_PARKED_MAX_AGE_MS,
  ensureShardConsumer,
  heldStreamConfig,
  inboxStreamConfig,
  MAX_ACK_PENDING,
  MAX_SHARD_COUNT,
  parkedStreamConfig,
  shardConsumerConfig,
  tryAddressFromToken,
  validateNamespace,
} from "./namespace.js";
export { MAX_FRAME_BYTES, parseServerVersion, type ServerVersion } from "./server.js";
