/** @troupe/coordinator — leader lease, membership, shard assignment and handoff, control API. */

export type { Coordinator, CoordinatorHealth, CoordinatorOptions } from "./coordinator.js";
export { createCoordinator } from "./coordinator.js";
export type { JoinOptions, Membership, MembershipHealth, ShardOwner } from "./membership.js";
export { joinCluster } from "./membership.js";
export { placeShards } from "./placement.js";
export type {
  Assignment,
  ClusterStatus,
  ControlError,
  LeaderLease,
  MemberEntry,
  ReleaseConfirmation,
  ReplayReply,
  ReplayRequest,
  ShardAssignment,
  WorkerStatus,
  WorkerSummary,
} from "./protocol.js";
export { controlSubject, workerControlSubject } from "./protocol.js";
export type {
  QuarantinedAgent,
  QuarantinedReply,
  QuarantineReply,
  QuarantineRequest,
  ReleaseReply,
  ReleaseRequest,
} from "./quarantine.js";
export {
  listQuarantined,
  type QuarantineControl,
  quarantineThroughLeader,
  requestAddress,
  requestReason,
  serveWorkerQuarantine,
  type WorkerControlOptions,
} from "./quarantine.js";
