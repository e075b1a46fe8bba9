/** @troupe/nats — Troupe on NATS JetStream: the backend, namespaces, and `connect` for clients. */

export {
  createNatsBackend,
  type NatsBackend,
  type NatsBackendOptions,
  type NatsBackendStats,
  type OwnShardsOptions,
  type ShardFence,
} from "./backend.js";
export {
  type ConnectNatsOptions,
  type ConnectOptions,
  connect,
  connectNats,
  type TroupeClient,
} from "./connect.js";
export { type AgentHistoryOptions, agentHistory } from "./history.js";
export {
  addressFromToken,
  DEFAULT_NAMESPACE,
  DEFAULT_SHARD_COUNT,
  type EnsureNamespaceOptions,
  ensureNamespace,
  ensureNamespaceRetrying,
  isNamespaceMissing,
  type NamespaceInfo,
  type NamespaceNames,
  namespaceNames,
  type OpenNamespaceOptions,
  openNamespace,
  shardOfAddress,
  subjectToken,
} from "./namespace.js";
export {
  checkServer,
  MIN_SERVER_VERSION,
  requireServerFeature,
  ServerFeature,
  type ServerLimits,
  serverHas,
} from "./server.js";
