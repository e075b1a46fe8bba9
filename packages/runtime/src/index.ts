/** @troupe/runtime — define XState agents, host them, talk to them. */
export { defineAgent } from "./agent.js";
export type { AgentConfig, AgentDefinition, AuthorizeArgs, RateLimit } from "./agent.js";
export { sendToAgent, reply, replyTo, currentRequest, currentMessage } from "./actions.js";
export type { ReplyToken, MessageInfo } from "./actions.js";
export { createRuntime } from "./runtime.js";
export type {
  AgentRef,
  AnyAgentEvent,
  AgentStatus,
  Receipt,
  RequestOptions,
  Runtime,
  RuntimeConfig,
  SendOptions,
} from "./runtime.js";
export { LifecycleState } from "./host.js";
export type { TroupeErrorEvent } from "./host.js";
export { createEmbeddedBackend } from "./embedded.js";
export type { EmbeddedBackend, EmbeddedBackendOptions } from "./embedded.js";
export type {
  AppendResult,
  Backend,
  BackendHandlers,
  Delivery,
  Outgoing,
  ParkedFrame,
  ParkingLot,
  QuarantineEntry,
  QuarantineRegistry,
  SnapshotRecord,
  SnapshotStore,
  StoredSnapshot,
} from "./backend.js";
export { StageOrder } from "./pipeline.js";
export type { Stage, StageContext, StageInfo, StageResult } from "./pipeline.js";
export type { RuntimeStats } from "./kernel.js";
export type { Logger } from "./logger.js";
export { silentLogger } from "./logger.js";
export type { Clock, ManualClock, Timer } from "./clock.js";
export { createManualClock, systemClock } from "./clock.js";
export {
  ErrorCode,
  TroupeError,
  isTroupeError,
  isTimeout,
  isValidationError,
  isUnknownAgent,
  isQuarantined,
  isInvalidState,
  isChannelNotFound,
  isCryptoError,
} from "@troupe/wire";
export { bind, send, channels, status, unbind } from "./channels.js";
export type { BoundHandle, Callable, ChannelInfo, ChannelMessage } from "./channels.js";
