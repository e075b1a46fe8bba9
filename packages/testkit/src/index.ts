/** @troupe/testkit — real nats-server processes and JetStream clusters for integration tests. */

export {
  findNatsServer,
  NATS_SERVER_ENV,
  natsServerMissing,
  natsServerVersion,
  pinnedNatsServerVersion,
} from "./binary.js";
export { type NatsClusterHandle, type NatsClusterOptions, startNatsCluster } from "./cluster.js";
export {
  CONTAINERS_ENV,
  containerSkipReason,
  containersRequested,
  dockerUnavailableReason,
  type NatsContainerHandle,
  type NatsContainerOptions,
  startNatsContainer,
} from "./container.js";
export * from "./errors.js";
export { type Logger, silentLogger } from "./logger.js";
export { freePorts } from "./ports.js";
export { type NatsServerHandle, type NatsServerOptions, startNatsServer } from "./server.js";
export { cleanup, type NatsServer, type SetupOptions, type SetupResult, setup } from "./setup.js";
