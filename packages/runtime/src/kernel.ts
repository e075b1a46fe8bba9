/** The runtime's internals as hosts and stages see them. */
import type { DecodeLimits, Frame, TroupeError } from "@troupe/wire";
import type { Backend } from "./backend.js";
import type { Clock } from "./clock.js";
import type { Host } from "./host.js";
import type { Logger } from "./logger.js";
import type { Pipeline } from "./pipeline.js";

export interface ResolvedConfig {
  maxRetries: number;
  retryDelayMs: number;
  enableHooks: boolean;
  idleTimeoutMs: number;
  requestTimeoutMs: number;
  shutdownTimeoutMs: number;
  limits: DecodeLimits;
  senderFailureLimit: number;
  senderFailureWindowMs: number;
  quarantineRefreshMs: number;
}

export interface RuntimeStats {
  /** Messages whose handler succeeded. */
  processed: number;
  /** Handler attempts that failed (each retry counts). */
  failed: number;
  retries: number;
  /** Messages refused by a pipeline stage (parked, sender told). */
  rejected: number;
  /** Redeliveries skipped because their effects were already stored. */
  skipped: number;
  acked: number;
  snapshots: number;
  activations: number;
  passivations: number;
  quarantines: number;
  /** Messages of quarantined agents moved to the parking lot (held until release). */
  held: number;
  /** Frames published by agents. */
  published: number;
  /** Replies that arrived after their request timed out. */
  lateReplies: number;
  /** Actions that could not do what they were asked (e.g. reply with nobody to reply to). */
  faults: number;
}

export interface Kernel {
  readonly config: ResolvedConfig;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly backend: Backend;
  readonly pipeline: Pipeline;
  readonly counters: RuntimeStats;
  /** Publish agents' outputs: durable ones appended in order, direct ones sent. */
  publish(frames: Frame[]): Promise<void>;
  sleep(ms: number): Promise<void>;
  /** The host stopped itself (failure): drop it so the next message activates afresh. */
  forget(host: Host): void;
  waitForPassivation(address: string): Promise<void>;
  /** A stage refused a frame `from` names: counted against that sender (decode/crypto/replay). */
  refusedFrom(from: string, err: TroupeError): void;
}

export function newStats(): RuntimeStats {
  return {
    processed: 0,
    failed: 0,
    retries: 0,
    rejected: 0,
    skipped: 0,
    acked: 0,
    snapshots: 0,
    activations: 0,
    passivations: 0,
    quarantines: 0,
    held: 0,
    published: 0,
    lateReplies: 0,
    faults: 0,
  };
}
