/** The runtime's internals as hosts and stages see them. */
import type { Attributes } from "@opentelemetry/api";
import type { DecodeLimits, Frame, TroupeError } from "@troupe/wire";
import type { Backend, Outgoing } from "./backend.js";
import type { Clock } from "./clock.js";
import type { Host } from "./host.js";
import type { Limiter } from "./limiter.js";
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
  maxConcurrentActivations: number;
  /** Added to every span the runtime starts (e.g. `troupe.worker.id`). */
  spanAttributes: Attributes | undefined;
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
  /**
   * Direct frames (replies, error notices for this client) refused: not sealed with one of
   * this runtime's keys, failing authentication, sealed while this runtime has no keys, or
   * undecodable. Logged and dropped; a request they answer times out.
   */
  directRefused: number;
  /** Actions that could not do what they were asked (e.g. reply with nobody to reply to). */
  faults: number;
}

/** One delivery handled by a host, for `RuntimeConfig.onMessageHandled` (metrics). */
export interface HandledMessage {
  /** The agent (`type/key`) or endpoint (`#hex`) it was for. */
  address: string;
  /**
   * ok: the handler ran; skipped: already covered by the stored snapshot; rejected: refused
   * by a pipeline stage (parked); failed: the handler failed every retry (the agent is
   * quarantined).
   */
  outcome: "ok" | "skipped" | "rejected" | "failed";
  /** Pipeline and handler, retries and their backoff included (ms, fractional). */
  durationMs: number;
}

export interface Kernel {
  readonly config: ResolvedConfig;
  /** Told about every delivery a host handled (absent: nothing is timed). */
  readonly onMessageHandled: ((m: HandledMessage) => void) | undefined;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly backend: Backend;
  readonly pipeline: Pipeline;
  readonly counters: RuntimeStats;
  /** Slots for activations reading their stored state (`maxConcurrentActivations`). */
  readonly activations: Limiter;
  /** Publish agents' outputs: durable ones appended in order, direct ones sent. */
  publish(frames: Frame[], prepared?: Outgoing[]): Promise<void>;
  /**
   * What `publish` sends for each frame, made now: throws for a frame that can never go out
   * (it cannot be encoded or sealed), before the state that sent it is stored.
   */
  prepare(frames: Frame[]): Outgoing[];
  sleep(ms: number): Promise<void>;
  /** The host stopped itself (failure): drop it so the next message activates afresh. */
  forget(host: Host): void;
  waitForPassivation(address: string): Promise<void>;
  /**
   * A stage refused a frame `from` names: counted against that sender (decode/crypto/replay).
   * Returns the reason when this refusal quarantined the sender.
   */
  refusedFrom(from: string, err: TroupeError): string | undefined;
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
    directRefused: 0,
    faults: 0,
  };
}
