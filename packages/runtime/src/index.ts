/** @troupe/runtime — define XState agents, host them, talk to them. */

export {
  ErrorCode,
  isChannelNotFound,
  isCryptoError,
  isInvalidState,
  isQuarantined,
  isTimeout,
  isTroupeError,
  isUnknownAgent,
  isValidationError,
  TroupeError,
} from "@troupe/wire";
export type { MessageInfo, ReplyToken } from "./actions.js";
export { currentMessage, currentRequest, reply, replyTo, sendToAgent } from "./actions.js";
export type { AgentConfig, AgentDefinition, AuthorizeArgs, RateLimit } from "./agent.js";
export { defineAgent } from "./agent.js";
export type {
  AppendResult,
  Backend,
  BackendHandlers,
  Delivery,
  HeldMessage,
  Outgoing,
  ParkedFrame,
  ParkingLot,
  QuarantineEntry,
  QuarantineRegistry,
  SnapshotRecord,
  SnapshotStore,
  StoredSnapshot,
} from "./backend.js";
export type {
  BindOptions,
  BoundHandle,
  Callable,
  ChannelError,
  ChannelInfo,
  ChannelMessage,
} from "./channels.js";
export { bind, channels, send, status, unbind } from "./channels.js";
export type { Clock, ManualClock, Timer } from "./clock.js";
export { createManualClock, systemClock } from "./clock.js";
export type { EmbeddedBackend, EmbeddedBackendOptions } from "./embedded.js";
export { createEmbeddedBackend } from "./embedded.js";
export type { TroupeErrorEvent } from "./host.js";
export { LifecycleState } from "./host.js";
export type { HandledMessage, RuntimeStats } from "./kernel.js";
export type { Logger } from "./logger.js";
export { silentLogger } from "./logger.js";
export type { Stage, StageContext, StageInfo, StageResult } from "./pipeline.js";
export { StageOrder } from "./pipeline.js";
export type { ReplayMessage, ReplayOptions, ReplayResult, ReplayStep } from "./replay.js";
export { replayAgent } from "./replay.js";
export type {
  AgentRef,
  AgentStatus,
  AnyAgentEvent,
  Receipt,
  ReplayReport,
  ReplayRequest,
  RequestOptions,
  Runtime,
  RuntimeConfig,
  SendOptions,
} from "./runtime.js";
export { createRuntime } from "./runtime.js";
export type { SealingConfig } from "./sealing.js";
export { parseChannelKey, readChannelKeys, readSealing } from "./sealing.js";
