/**
 * createRuntime: hosts agents on a backend (embedded by default) and gives refs to talk to
 * them. The same API runs against the JetStream backend in a cluster.
 */

import type { Attributes } from "@opentelemetry/api";
import {
  agentAddress,
  DEFAULT_LIMITS,
  type DecodeLimits,
  decodeFrame,
  type Envelope,
  ErrorCode,
  type ErrorInfo,
  encodeFrame,
  type Frame,
  type FrameKind,
  fromErrorInfo,
  keyNameOf,
  newMessageId,
  parseAgentAddress,
  peekEnvelope,
  TroupeError,
} from "@troupe/wire";
import { assertLimits } from "@troupe/wire/internal";
import type { EventFromLogic } from "xstate";
import type { AgentDefinition } from "./agent.js";
import type { Backend, Delivery, Outgoing, ParkedFrame, QuarantineEntry } from "./backend.js";
import { Channel, type Channels } from "./channels-table.js";
import { type Clock, systemClock } from "./clock.js";
import { createEmbeddedBackend } from "./embedded.js";
import { AgentHost, failureNotice, type Host, type HostStatus, LifecycleState } from "./host.js";
import {
  type HandledMessage,
  type Kernel,
  newStats,
  type ResolvedConfig,
  type RuntimeStats,
} from "./kernel.js";
import { Limiter } from "./limiter.js";
import { type Logger, silentLogger } from "./logger.js";
import { isPromise, Pipeline, type Stage, type StageInfo } from "./pipeline.js";
import { type ReplayResult, type ReplayStep, replayAgent } from "./replay.js";
import { describe, notSealed, Sealing, type SealingConfig } from "./sealing.js";
import { SenderQuarantine } from "./senders.js";
import { builtInStages, checkEvent } from "./stages.js";
import {
  activeContext,
  endSendSpan,
  startProcessSpan,
  startSendSpan,
  tracingEnabled,
} from "./tracing.js";

/** A client inbox has no inbox sequence or shard. */
const NO_DETAILS = { sequence: 0, redelivered: false, shard: undefined, state: undefined };

export interface RuntimeConfig {
  /** The agent types this runtime hosts. */
  agents?: readonly AgentDefinition[];
  /** Where messages and snapshots live. Default: a new embedded (in-process) backend. */
  backend?: Backend;
  /** Retries of a failing handler before the agent is quarantined. Default 3. */
  maxRetries?: number;
  /** First retry delay in ms; doubles with each retry. Default 100. */
  retryDelayMs?: number;
  /** Allow `runtime.use(stage)`. Default false. */
  enableHooks?: boolean;
  /** Passivate agents idle this long (ms); 0 = never. Default 60,000. */
  idleTimeoutMs?: number;
  /**
   * Agents reading their stored state at once, at most (the rest wait their turn). Bounds
   * the requests a burst of messages to agents not in memory puts in flight, so heartbeats
   * and acks are not stuck behind thousands of reads. Default 64.
   */
  maxConcurrentActivations?: number;
  /** Default timeout of `ref.request` (ms). Default 30,000. */
  requestTimeoutMs?: number;
  /** How long `shutdown()` waits for in-flight work (ms). Default 10,000. */
  shutdownTimeoutMs?: number;
  /** Decoding limits for inbound frames. */
  limits?: Partial<DecodeLimits>;
  /**
   * Seal agent traffic with channel keys: every agent frame this runtime sends (sends,
   * requests, replies, error notices) is sealed with `sealWith`, and only frames sealed with
   * one of `keys` are taken (others are refused with CRYPTO_ERROR). Off by default. A key
   * that is not 32 bytes, several keys without `sealWith`, or a `sealWith` that names none of
   * them: CONFIG_ERROR.
   */
  sealing?: SealingConfig;
  /**
   * Quarantine a sender after this many of its frames were refused as undecodable
   * (DECODE_ERROR, UNSUPPORTED_VERSION) or unopenable (CRYPTO_ERROR) within
   * `senderFailureWindowMs` (not replays: those are someone else re-sending its frames);
   * 0 = never. Default 5.
   */
  senderFailureLimit?: number;
  /** The window of `senderFailureLimit` (ms). Default 60,000. */
  senderFailureWindowMs?: number;
  /**
   * How often the registry is listed again to refresh which senders are refused (ms): the
   * most a quarantine or release made by another process can take to apply here (a backend
   * that watches the registry, like NATS, applies them at once). Default 5,000.
   */
  quarantineRefreshMs?: number;
  /**
   * Quarantines a sender that is an agent hosted by another process, so its owner stops it
   * at once (a worker wires this to the coordinator's `ctl.quarantine`, which forwards to the
   * owner). Absent, or when it fails, the entry is written to the registry directly: frames
   * from the sender are refused everywhere, and its owner holds its messages from its next
   * activation on.
   */
  quarantineElsewhere?: (entry: QuarantineEntry) => Promise<void>;
  /**
   * Called after each delivery a host handled, with how long it took: the hook a process
   * feeds a latency histogram from (the runtime has no metrics library). Called on the hot
   * path: keep it cheap and do not throw.
   */
  onMessageHandled?: (m: HandledMessage) => void;
  /**
   * Attributes added to every span this runtime starts (a worker adds `troupe.worker.id`).
   * Spans go to the tracer provider registered with `@opentelemetry/api`, if any.
   */
  spanAttributes?: Attributes;
  logger?: Logger;
  clock?: Clock;
}

/** What `send` returns once the message is durably in the agent's inbox. */
export interface Receipt {
  messageId: string;
  /** The inbox sequence the message was stored at (its position for replay). */
  sequence: number;
  timestampNs: bigint;
}

export interface SendOptions {
  /** Idempotency key: a second send with the same id (within the dedup window) is stored once. */
  messageId?: string;
}

export interface RequestOptions extends SendOptions {
  timeoutMs?: number;
}

export type AgentStatus = HostStatus;

/** Any XState event: an object with a string `type`. */
export interface AnyAgentEvent {
  type: string;
  [field: string]: unknown;
}

export interface AgentRef<TEvent extends { type: string } = AnyAgentEvent> {
  readonly type: string;
  readonly key: string;
  /** `type/key` */
  readonly address: string;
  /** Resolves once the message is durably in the agent's inbox (not once it is handled). */
  send(event: TEvent, options?: SendOptions): Promise<Receipt>;
  /** Sends a request and waits for the agent's `reply(...)`. Rejects with TIMEOUT, or the agent's error. */
  request<T = unknown>(event: TEvent, options?: RequestOptions): Promise<T>;
  status(): Promise<AgentStatus>;
}

export interface Runtime {
  /** This process's client id; replies come to `~<clientId>`. */
  readonly clientId: string;
  readonly backend: Backend;
  /** A ref to agent `type/key`; pass the definition instead of its type for typed events. */
  ref<D extends AgentDefinition>(agent: D, key: string): AgentRef<EventFromLogic<D["machine"]>>;
  ref(type: string, key: string): AgentRef;
  /** Quarantine by hand: its messages are held, in order, until release. */
  quarantine(ref: AgentRef | string, reason: string): Promise<void>;
  /**
   * Lift quarantine; held messages are delivered first, in order. Returns how many were held.
   * Takes a sender's address too (`~client`, `#endpoint`): its frames are taken again; those
   * parked while it was quarantined stay parked.
   */
  release(ref: AgentRef | string): Promise<number>;
  quarantined(): Promise<QuarantineEntry[]>;
  /**
   * Replays the agent's message history (backends that keep one, e.g. NATS) through its
   * machine in a sandbox, up to the last message its stored snapshot covers. With `dryRun`
   * it only reports each step. Without, it rebuilds the agent: the activation is passivated,
   * messages for it wait, and the replayed state replaces the stored one (compare-and-set;
   * its outbox and sequence numbers are kept, nothing is sent again). A replay in which a
   * message fails changes nothing (INVALID_STATE).
   */
  replay(ref: AgentRef | string, options?: ReplayRequest): Promise<ReplayReport>;
  /** Frames refused by the pipeline (with their reasons), newest last. */
  parked(limit?: number): Promise<ParkedFrame[]>;
  /** Add a checkpoint stage (needs `enableHooks`). */
  use(stage: Stage): void;
  stages(): StageInfo[];
  stats(): Readonly<RuntimeStats> & { activeAgents: number };
  /** Waits until no message is in flight (all mailboxes handled). Mostly for tests and demos. */
  settled(): Promise<void>;
  /** Finishes in-flight work, persists snapshots, stops. */
  shutdown(): Promise<void>;
}

export interface ReplayRequest {
  /** Start from the machine's initial state with the message at this inbox sequence (default 1). */
  fromSequence?: number;
  /** Report only: no snapshot is written. */
  dryRun?: boolean;
  onStep?: (step: ReplayStep) => void;
}

export interface ReplayReport extends ReplayResult {
  dryRun: boolean;
  /** True when the rebuilt state was stored. */
  stored: boolean;
  /** The last inbox sequence the stored snapshot covered: where the replay stopped. */
  toSequence: number;
}

interface PendingRequest {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  cancel(): void;
  /** Why a reply to it was refused (sealing): the timeout says so. */
  refused?: string;
}

function resolveConfig(c: RuntimeConfig): ResolvedConfig {
  const num = (name: string, v: number | undefined, dflt: number, min = 0): number => {
    if (v === undefined) return dflt;
    if (typeof v !== "number" || !Number.isFinite(v) || v < min) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `${name} must be a number >= ${min}, got ${String(v)}`,
      );
    }
    return v;
  };
  if (c.enableHooks !== undefined && typeof c.enableHooks !== "boolean") {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, "enableHooks must be a boolean");
  }
  const limits = { ...DEFAULT_LIMITS, ...c.limits };
  try {
    // the rules the codec applies to every frame, checked here once: bad limits stop the
    // runtime at start instead of refusing every message
    assertLimits(limits);
  } catch (e) {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, `limits: ${(e as Error).message}`, { cause: e });
  }
  if (c.quarantineElsewhere !== undefined && typeof c.quarantineElsewhere !== "function") {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, "quarantineElsewhere must be a function");
  }
  if (c.onMessageHandled !== undefined && typeof c.onMessageHandled !== "function") {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, "onMessageHandled must be a function");
  }
  const senderFailureLimit = num("senderFailureLimit", c.senderFailureLimit, 5);
  if (!Number.isInteger(senderFailureLimit)) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `senderFailureLimit must be an integer >= 0, got ${String(c.senderFailureLimit)}`,
    );
  }
  const maxConcurrentActivations = num(
    "maxConcurrentActivations",
    c.maxConcurrentActivations,
    64,
    1,
  );
  if (!Number.isInteger(maxConcurrentActivations)) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `maxConcurrentActivations must be an integer >= 1, got ${String(c.maxConcurrentActivations)}`,
    );
  }
  return {
    senderFailureLimit,
    maxConcurrentActivations,
    senderFailureWindowMs: num("senderFailureWindowMs", c.senderFailureWindowMs, 60_000, 1),
    quarantineRefreshMs: num("quarantineRefreshMs", c.quarantineRefreshMs, 5_000, 10),
    maxRetries: Math.floor(num("maxRetries", c.maxRetries, 3)),
    retryDelayMs: num("retryDelayMs", c.retryDelayMs, 100),
    enableHooks: c.enableHooks ?? false,
    idleTimeoutMs: num("idleTimeoutMs", c.idleTimeoutMs, 60_000),
    requestTimeoutMs: num("requestTimeoutMs", c.requestTimeoutMs, 30_000, 1),
    shutdownTimeoutMs: num("shutdownTimeoutMs", c.shutdownTimeoutMs, 10_000),
    limits,
    spanAttributes: c.spanAttributes,
  };
}

/** @internal The runtime's implementation; the public surface is the Runtime interface. */
export class RuntimeCore implements Kernel, Runtime {
  readonly clientId = newMessageId();
  readonly config: ResolvedConfig;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly backend: Backend;
  readonly pipeline = new Pipeline();
  readonly counters = newStats();
  readonly activations: Limiter;
  readonly onMessageHandled: ((m: HandledMessage) => void) | undefined;
  readonly channels: Channels = new Map();
  readonly definitions = new Map<string, AgentDefinition>();
  readonly hosts = new Map<string, Host>();
  readonly #passivating = new Map<string, Promise<void>>();
  readonly #pending = new Map<string, PendingRequest>();
  readonly #inbox: string;
  #clientSequence = 0;
  #running = false;
  #stopping = false;
  /** Shutdown has drained in-flight work and is closing hosts: take no new deliveries. */
  #closingHosts = false;
  #sweep: { cancel(): void } | undefined;
  /** Work started outside a host (e.g. parking an orphan) that `settled()` waits for. */
  #orphanWork = new Set<Promise<void>>();
  readonly #senders: SenderQuarantine;
  readonly #quarantineElsewhere: ((entry: QuarantineEntry) => Promise<void>) | undefined;
  #refresh: { cancel(): void } | undefined;
  #unwatch: (() => void) | undefined;
  /** Seals what this runtime sends and opens what it takes; undefined = plain frames. */
  readonly #sealing: Sealing | undefined;

  constructor(config: RuntimeConfig) {
    this.config = resolveConfig(config);
    this.activations = new Limiter(this.config.maxConcurrentActivations);
    this.#sealing =
      config.sealing === undefined ? undefined : new Sealing(config.sealing, this.config.limits);
    this.clock = config.clock ?? systemClock;
    this.logger = config.logger ?? silentLogger;
    this.backend = config.backend ?? createEmbeddedBackend({ clock: this.clock });
    this.#inbox = `~${this.clientId}`;
    this.#senders = new SenderQuarantine(
      this.config.senderFailureLimit,
      this.config.senderFailureWindowMs,
    );
    this.#quarantineElsewhere = config.quarantineElsewhere;
    this.onMessageHandled = config.onMessageHandled;
    for (const def of config.agents ?? []) {
      if (def?.kind !== "troupe.agent") {
        throw new TroupeError(ErrorCode.CONFIG_ERROR, "agents must be made with defineAgent()");
      }
      if (this.definitions.has(def.type)) {
        throw new TroupeError(ErrorCode.CONFIG_ERROR, `agent type "${def.type}" is defined twice`);
      }
      this.definitions.set(def.type, def);
    }
    for (const s of builtInStages({
      limits: this.config.limits,
      clock: this.clock,
      hostOf: (a) => this.hosts.get(a),
      channels: this.channels,
      sealing: this.#sealing,
      refusedSender: (from) => this.#senders.refused(from),
    })) {
      this.pipeline.add(s);
    }
  }

  async start(): Promise<void> {
    // the refused senders are known before the first delivery
    this.#unwatch = this.backend.watchQuarantine?.((address, entry) => {
      if (entry === undefined) this.#senders.delete(address);
      else this.#senders.set(entry);
    });
    await this.#refreshSenders();
    await this.backend.open(this.clientId, {
      deliver: (d) => this.#route(d),
      direct: (m) => this.#onDirect(m),
    });
    this.#running = true;
    this.#scheduleSweep();
    this.#scheduleRefresh();
  }

  /** Lists the registry into the view of refused senders; a failure keeps the old view. */
  async #refreshSenders(): Promise<void> {
    const generation = this.#senders.generation;
    try {
      this.#senders.replace(await this.backend.quarantine.list(), generation);
    } catch (err) {
      this.logger.warn({ err }, "could not list the quarantine registry; retrying later");
    }
  }

  #scheduleRefresh(): void {
    this.#refresh = this.clock.setTimeout(() => {
      void this.#refreshSenders().finally(() => {
        if (this.#running && !this.#stopping) this.#scheduleRefresh();
      });
    }, this.config.quarantineRefreshMs);
  }

  // --- Kernel ----------------------------------------------------------------------------

  /**
   * Each frame as it goes to the backend: sealed when this runtime seals, encoded when the
   * backend takes bytes anyway (not the embedded one, which passes frames by reference).
   * Throws what encoding throws (INVALID_ARGUMENT, LIMIT_EXCEEDED) for a frame that cannot go.
   */
  #outgoing(f: Frame): Outgoing {
    if (this.#sealing !== undefined) return this.#sealing.seal(f);
    if (this.backend.kind === "embedded") return { frame: f };
    return { bytes: encodeFrame(f, this.config.limits), envelope: f.envelope };
  }

  prepare(frames: Frame[]): Outgoing[] {
    const out: Outgoing[] = [];
    for (const f of frames) {
      try {
        out.push(this.#outgoing(f));
      } catch (e) {
        const cause = e instanceof TroupeError ? e : undefined;
        throw new TroupeError(
          cause?.code ?? ErrorCode.INVALID_ARGUMENT,
          `a message to ${f.envelope.to} cannot be sent: ${e instanceof Error ? e.message : String(e)}`,
          { cause: e },
        );
      }
    }
    return out;
  }

  async publish(frames: Frame[], prepared?: Outgoing[]): Promise<void> {
    if (frames.length === 0) return;
    // appends are issued in order without waiting one by one: the inbox keeps their order
    const acks: Promise<unknown>[] = [];
    for (let i = 0; i < frames.length; i++) {
      const f = frames[i]!;
      this.counters.published++;
      let out = prepared?.[i];
      if (out === undefined) {
        try {
          out = this.#outgoing(f);
        } catch (e) {
          acks.push(Promise.reject(e));
          continue;
        }
      }
      if (f.envelope.to.startsWith("~")) acks.push(this.backend.sendDirect(out));
      else acks.push(this.backend.append(out));
    }
    await Promise.all(acks);
  }

  sleep(ms: number): Promise<void> {
    return new Promise((r) => this.clock.setTimeout(r, ms));
  }

  forget(host: Host): void {
    if (this.hosts.get(host.address) === host) this.hosts.delete(host.address);
  }

  async waitForPassivation(address: string): Promise<void> {
    await this.#passivating.get(address);
  }

  refusedFrom(from: string, err: TroupeError): string | undefined {
    const reason = this.#senders.failed(from, err, this.clock.now());
    if (reason === undefined) return undefined;
    const entry: QuarantineEntry = {
      address: from,
      reason,
      by: "auto",
      since: this.clock.now(),
      refuseFrames: true,
    };
    // refused here from now on, whatever the registry write below takes
    this.#senders.set(entry);
    this.logger.warn({ sender: from, reason }, "quarantining sender");
    this.#track(
      this.#quarantineSender(entry).catch((err: unknown) =>
        this.logger.error({ err, sender: from }, "could not record the sender's quarantine"),
      ),
    );
    return reason;
  }

  /**
   * Records a sender's quarantine where it takes effect: its live activation here (which
   * then holds its messages, as a manual quarantine does), the owner of its shard when it is
   * an agent hosted elsewhere, else the registry alone (clients, unhosted endpoints, agents
   * with no live activation: they find the entry when activated).
   */
  async #quarantineSender(entry: QuarantineEntry): Promise<void> {
    const address = entry.address;
    const host = this.hosts.get(address);
    if (host !== undefined) {
      await this.#enterQuarantine(host, entry.reason, "auto", true);
      return;
    }
    this.counters.quarantines++;
    const agent = !address.startsWith("~") && !address.startsWith("#");
    if (agent && this.backend.hosts?.(address) === false && this.#quarantineElsewhere) {
      try {
        await this.#quarantineElsewhere(entry);
        return;
      } catch (err) {
        this.logger.warn(
          { err, sender: address },
          "could not have the sender's owner quarantine it; recording it in the registry",
        );
      }
    }
    await this.backend.quarantine.set(entry);
  }

  async #enterQuarantine(
    host: Host,
    reason: string,
    by: "auto" | "manual",
    refuseFrames: boolean,
  ): Promise<QuarantineEntry> {
    const entry = await host.enterQuarantine(reason, by, refuseFrames);
    if (refuseFrames) this.#senders.set(entry);
    // what waits in its mailbox goes to the parking lot now
    if (host.pendingMessageCount > 0) void host.kick();
    return entry;
  }

  // --- inbound ---------------------------------------------------------------------------

  #route(d: Delivery): void {
    // hosts are closing for good: leave it unacknowledged for the next consumer
    if (this.#closingHosts && !this.hosts.has(d.to)) return;
    const rebuilding = this.#rebuilding.size > 0 ? this.#rebuilding.get(d.to) : undefined;
    if (rebuilding !== undefined) {
      rebuilding.push(d);
      return;
    }
    let host = this.hosts.get(d.to);
    if (host === undefined) {
      const created = this.#createHost(d.to);
      if (created instanceof TroupeError) {
        this.#track(this.#rejectOrphan(d, created));
        return;
      }
      host = created;
      this.hosts.set(d.to, host);
    }
    host.enqueue(d);
  }

  #createHost(address: string): Host | TroupeError {
    if (address.startsWith("#")) {
      return new TroupeError(
        ErrorCode.INVALID_STATE,
        `${address} is not bound (unbound, or never was)`,
      );
    }
    let parsed: { type: string; key: string };
    try {
      parsed = parseAgentAddress(address);
    } catch (e) {
      return e as TroupeError;
    }
    const def = this.definitions.get(parsed.type);
    if (def === undefined) {
      return new TroupeError(
        ErrorCode.UNKNOWN_AGENT,
        `no agent type "${parsed.type}" is defined here`,
        {
          details: { address },
        },
      );
    }
    return new AgentHost(address, parsed.type, parsed.key, def, this);
  }

  #track(p: Promise<void>): void {
    this.#orphanWork.add(p);
    void p.finally(() => this.#orphanWork.delete(p));
  }

  /** A message nobody here can take: park it, tell its sender, acknowledge it. */
  async #rejectOrphan(d: Delivery, err: TroupeError): Promise<void> {
    this.counters.rejected++;
    let env = d.frame?.envelope;
    if (env === undefined && d.bytes !== undefined) {
      try {
        env = peekEnvelope(d.bytes, this.config.limits).envelope;
      } catch {
        // undecodable as well: parked below with the routing failure as its reason
      }
    }
    const entry: ParkedFrame = {
      sequence: d.sequence,
      to: d.to,
      reason: err.message,
      code: err.code,
      at: this.clock.now(),
    };
    if (d.frame !== undefined) entry.frame = d.frame;
    else if (d.bytes !== undefined) entry.bytes = d.bytes;
    await this.backend.parked.park(entry);
    this.logger.warn(
      { to: d.to, code: err.code, sequence: d.sequence },
      `message parked: ${err.message}`,
    );
    const notice = env === undefined ? undefined : failureNotice(env, err);
    if (notice !== undefined) {
      await this.publish([
        {
          envelope: {
            version: 1,
            kind: "error",
            messageId: newMessageId(),
            from: this.#inbox,
            to: notice.to,
            sequence: ++this.#clientSequence,
            timestampNs: this.clock.nowNs(),
            correlationId: notice.correlationId,
          },
          message: { kind: "error", payload: notice.error },
        },
      ]);
    }
    d.ack();
  }

  /** A direct frame for this client (a reply, an error notice), or the bytes of a sealed one. */
  #onDirect(m: Frame | Uint8Array): void {
    let f: Frame;
    if (m instanceof Uint8Array) {
      const opened = this.#openDirect(m);
      if (opened === undefined) return;
      f = opened;
    } else if (this.#sealing !== undefined) {
      this.#refuseDirect(m.envelope, notSealed(m.envelope));
      return;
    } else f = m;
    if (tracingEnabled()) {
      // the reply's arrival, as the last span of a request's trace
      const { span } = startProcessSpan(this, this.#inbox, f.envelope, undefined, NO_DETAILS);
      span.end();
    }
    const id = f.envelope.correlationId;
    const p = id === undefined ? undefined : this.#pending.get(id);
    if (p === undefined) {
      if (f.envelope.kind === "error") {
        const info = f.message.payload as ErrorInfo;
        this.logger.warn(
          { from: f.envelope.from, code: info?.code },
          `a message sent from here failed: ${info?.message}`,
        );
      } else {
        this.counters.lateReplies++;
      }
      return;
    }
    this.#pending.delete(id!);
    p.cancel();
    if (f.envelope.kind === "error") p.reject(fromErrorInfo(f.message.payload as ErrorInfo));
    else p.resolve(f.message.payload);
  }

  #openDirect(bytes: Uint8Array): Frame | undefined {
    let peeked: { envelope: Envelope; sealed: boolean };
    let plain: Frame | undefined;
    try {
      peeked = peekEnvelope(bytes, this.config.limits);
      if (!peeked.sealed) plain = decodeFrame(bytes, this.config.limits);
    } catch (e) {
      this.#refuseDirect(undefined, e);
      return undefined;
    }
    if (plain !== undefined) {
      if (this.#sealing === undefined) return plain;
      this.#refuseDirect(plain.envelope, notSealed(plain.envelope));
      return undefined;
    }
    const env = peeked.envelope;
    const sealing = this.#sealing;
    if (sealing === undefined) {
      const name = keyNameOf(env.channel);
      const err = new TroupeError(
        ErrorCode.CRYPTO_ERROR,
        `${describe(env)} is sealed${name === undefined ? "" : ` with key "${name}"`}, and this runtime has no channel keys to open it (RuntimeConfig.sealing)`,
        { details: { from: env.from, channel: env.channel ?? null } },
      );
      this.#refuseDirect(env, err);
      // Nothing here can open it, and plain frames are taken here anyway (so refusing at once
      // gives a forger nothing new): the request it answers fails now, saying why.
      const id = env.correlationId;
      const p = id === undefined ? undefined : this.#pending.get(id);
      if (p !== undefined) {
        this.#pending.delete(id!);
        p.cancel();
        p.reject(err);
      }
      return undefined;
    }
    try {
      return sealing.open(bytes, env);
    } catch (e) {
      this.#refuseDirect(env, e);
      return undefined;
    }
  }

  /**
   * A direct frame that cannot be trusted: counted and logged, never handed on. A request it
   * claims to answer keeps waiting (a forger must not be able to end it) and its TIMEOUT says
   * what was refused.
   */
  #refuseDirect(env: Envelope | undefined, e: unknown): void {
    this.counters.directRefused++;
    const err = e instanceof TroupeError ? e : new TroupeError(ErrorCode.DECODE_ERROR, String(e));
    this.logger.warn(
      { from: env?.from, kind: env?.kind, code: err.code, channel: env?.channel },
      `direct frame refused: ${err.message}`,
    );
    const id = env?.correlationId;
    const p = id === undefined ? undefined : this.#pending.get(id);
    if (p !== undefined) p.refused = `${err.code}: ${err.message}`;
  }

  // --- outbound (clients) ----------------------------------------------------------------

  #checkRunning(): void {
    if (!this.#running || this.#stopping) {
      throw new TroupeError(ErrorCode.SHUTDOWN, "the runtime is shut down");
    }
  }

  #frameFor(address: string, kind: FrameKind, event: unknown, options?: SendOptions): Frame {
    const messageId = options?.messageId ?? newMessageId();
    if (typeof messageId !== "string" || messageId.length === 0 || messageId.length > 128) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        "messageId must be a string of 1-128 characters",
      );
    }
    return {
      envelope: {
        version: 1,
        kind,
        messageId,
        from: this.#inbox,
        to: address,
        sequence: ++this.#clientSequence,
        timestampNs: this.clock.nowNs(),
      },
      message: { kind: "data", payload: event },
    };
  }

  /**
   * The receiver's checks (the validate stage's `checkEvent`), made at the sender when this
   * runtime knows the agent type: fast, clear errors. The event goes as it was given; the
   * receiver validates it again and takes what its schema makes of it.
   */
  #precheck(type: string, event: unknown): undefined | Promise<unknown> {
    const def = this.definitions.get(type);
    if (def === undefined) {
      // In one process the definitions are all there is; in a cluster another worker may
      // host the type, and the receiver answers UNKNOWN_AGENT if none does.
      if (this.backend.kind !== "embedded") return undefined;
      throw new TroupeError(ErrorCode.UNKNOWN_AGENT, `no agent type "${type}" is defined here`);
    }
    const checked = checkEvent(def, event);
    return isPromise(checked) ? checked : undefined;
  }

  #append(frame: Frame, fresh = false): Promise<Receipt> {
    if (tracingEnabled()) {
      // the caller's active span (if any) is the parent: a client's flow joins its own trace
      const span = startSendSpan(this, frame, activeContext());
      return endSendSpan(span, this.#appendUntraced(frame, fresh));
    }
    return this.#appendUntraced(frame, fresh);
  }

  #appendUntraced(frame: Frame, fresh: boolean): Promise<Receipt> {
    let out: Outgoing;
    if (this.#sealing === undefined) out = { frame, fresh };
    else {
      try {
        out = this.#sealing.seal(frame);
      } catch (e) {
        return Promise.reject(e);
      }
      out.fresh = fresh;
    }
    return this.#appendOut(out, frame.envelope);
  }

  /** Appends to the inbox; the receipt, or a typed error (TRANSPORT_ERROR when untyped). */
  #appendOut(out: Outgoing, envelope: Frame["envelope"]): Promise<Receipt> {
    return this.backend.append(out).then(
      (r) => ({
        messageId: envelope.messageId,
        sequence: r.sequence,
        timestampNs: envelope.timestampNs,
      }),
      (e: unknown) => {
        throw e instanceof TroupeError
          ? e
          : new TroupeError(
              ErrorCode.TRANSPORT_ERROR,
              `could not append to the inbox: ${String(e)}`,
              {
                cause: e,
                retryAfterMs: 1000,
              },
            );
      },
    );
  }

  ref<D extends AgentDefinition>(agent: D, key: string): AgentRef<EventFromLogic<D["machine"]>>;
  ref(type: string, key: string): AgentRef;
  ref(agent: string | AgentDefinition, key: string): AgentRef {
    const type = typeof agent === "string" ? agent : agent?.type;
    const address = agentAddress(type, key);
    // not async: one promise per send on the hot path
    const send = (event: { type: string }, options?: SendOptions): Promise<Receipt> => {
      try {
        this.#checkRunning();
        const pre = this.#precheck(type, event);
        if (pre !== undefined) {
          return pre.then(() =>
            this.#append(
              this.#frameFor(address, "event", event, options),
              options?.messageId === undefined,
            ),
          );
        }
        return this.#append(
          this.#frameFor(address, "event", event, options),
          options?.messageId === undefined,
        );
      } catch (e) {
        return Promise.reject(e);
      }
    };
    const request = async <T>(event: { type: string }, options?: RequestOptions): Promise<T> => {
      this.#checkRunning();
      const pre = this.#precheck(type, event);
      if (pre !== undefined) await pre;
      const timeoutMs = options?.timeoutMs ?? this.config.requestTimeoutMs;
      if (!(timeoutMs > 0)) {
        throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "timeoutMs must be > 0");
      }
      const frame = this.#frameFor(address, "request", event, options);
      const correlationId = frame.envelope.messageId;
      frame.envelope.correlationId = correlationId;
      frame.envelope.replyTo = this.#inbox;
      const result = new Promise<T>((resolve, reject) => {
        const timer = this.clock.setTimeout(() => {
          const refused = this.#pending.get(correlationId)?.refused;
          this.#pending.delete(correlationId);
          reject(
            new TroupeError(
              ErrorCode.TIMEOUT,
              `no reply from ${address} within ${timeoutMs} ms${refused === undefined ? "" : `; a reply came and was refused: ${refused}`}`,
              {
                details: {
                  address,
                  messageId: correlationId,
                  timeoutMs,
                  ...(refused === undefined ? {} : { refused }),
                },
              },
            ),
          );
        }, timeoutMs);
        this.#pending.set(correlationId, {
          resolve: resolve as (v: unknown) => void,
          reject,
          cancel: () => timer.cancel(),
        });
      });
      try {
        await this.#append(frame, options?.messageId === undefined);
      } catch (e) {
        this.#pending.get(correlationId)?.cancel();
        this.#pending.delete(correlationId);
        throw e;
      }
      return result;
    };
    const status = async (): Promise<AgentStatus> => this.#status(address);
    return Object.freeze({ type, key, address, send, request, status });
  }

  async #status(address: string): Promise<AgentStatus> {
    if (!this.#running && this.#stopping) {
      return { state: LifecycleState.UNBOUND, channelCount: 0, pendingMessageCount: 0 };
    }
    const host = this.hosts.get(address);
    if (host !== undefined) return host.status();
    const q = await this.backend.quarantine.get(address);
    return {
      state: q === undefined ? LifecycleState.BOUND : LifecycleState.QUARANTINED,
      channelCount: 0,
      pendingMessageCount: 0,
    };
  }

  // --- operator surface ------------------------------------------------------------------

  #addressOf(ref: AgentRef | string): string {
    const address = typeof ref === "string" ? ref : ref?.address;
    // bound callables (`#<hex id>`) can be quarantined and released too
    if (!(typeof address === "string" && address.startsWith("#") && this.hosts.has(address))) {
      parseAgentAddress(address);
    }
    return address;
  }

  /** A sender address a release may name: an agent, a client inbox or an endpoint. */
  #senderAddressOf(ref: AgentRef | string): string {
    const address = typeof ref === "string" ? ref : ref?.address;
    if (typeof address === "string" && /^[~#]./.test(address) && address.length <= 1024) {
      return address;
    }
    return this.#addressOf(ref);
  }

  quarantine(ref: AgentRef | string, reason: string): Promise<void> {
    return this.quarantineAs(ref, reason, { by: "manual" }).then(() => undefined);
  }

  /**
   * @internal `quarantine` with who decided and whether the address's frames are refused
   * too (a sender's quarantine forwarded from the process that counted its failures).
   */
  async quarantineAs(
    ref: AgentRef | string,
    reason: string,
    options: { by: "auto" | "manual"; refuseFrames?: boolean },
  ): Promise<QuarantineEntry> {
    const address = this.#addressOf(ref);
    if (typeof reason !== "string" || reason.trim() === "") {
      throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "quarantine needs a reason");
    }
    const refuseFrames = options.refuseFrames === true;
    const host = this.hosts.get(address);
    if (host !== undefined) return this.#enterQuarantine(host, reason, options.by, refuseFrames);
    this.counters.quarantines++;
    const entry: QuarantineEntry = { address, reason, by: options.by, since: this.clock.now() };
    if (refuseFrames) entry.refuseFrames = true;
    await this.backend.quarantine.set(entry);
    if (refuseFrames) this.#senders.set(entry);
    return entry;
  }

  async release(ref: AgentRef | string): Promise<number> {
    const address = this.#senderAddressOf(ref);
    const entry = await this.backend.quarantine.get(address);
    let host = this.hosts.get(address);
    if (address.startsWith("~") || (address.startsWith("#") && host === undefined)) {
      // a client or an endpoint not bound here: nothing is held for it here, only its entry
      if (entry === undefined && this.#senders.refused(address) === undefined) {
        throw new TroupeError(ErrorCode.INVALID_STATE, `${address} is not quarantined`);
      }
      await this.backend.quarantine.delete(address);
      // its frames are taken again from now on; those parked meanwhile stay parked (audit)
      this.#senders.delete(address);
      return 0;
    }
    if (entry === undefined && host?.state !== LifecycleState.QUARANTINED) {
      throw new TroupeError(ErrorCode.INVALID_STATE, `${address} is not quarantined`);
    }
    const held = host === undefined ? await this.backend.parked.heldCount(address) : 0;
    if (host === undefined && held === 0) {
      // nothing waits for it: the next message finds it released
      await this.backend.quarantine.delete(address);
      this.#senders.delete(address);
      return 0;
    }
    if (host === undefined && this.backend.hosts?.(address) === false) {
      throw new TroupeError(
        ErrorCode.INVALID_STATE,
        `${address} has ${held} held message(s) and is hosted by another process: release it where it is hosted (troupe release, or the ctl.release control subject)`,
        { details: { address, held } },
      );
    }
    // Marked first: a crash or shard move before the held messages are all delivered leaves
    // the mark, and the next activation finishes the release before taking new messages.
    if (entry !== undefined && entry.releasing === undefined) {
      await this.backend.quarantine.set({ ...entry, releasing: this.clock.now() });
    }
    // a released sender's frames are taken again from the start of its release
    this.#senders.delete(address);
    if (host === undefined) {
      const created = this.#createHost(address);
      if (created instanceof TroupeError) throw created;
      host = created;
      this.hosts.set(address, host);
    }
    // a host made just now has not read its held messages yet: count them as held
    return Math.max(host.release(), held);
  }

  /**
   * @internal Finishes releases that were under way when their agents' previous host
   * stopped (a crash, a shard move): activates each matching agent whose quarantine entry is
   * marked releasing and is not active here. A worker calls it for the shards it takes on.
   */
  async resumeReleases(match: (address: string) => boolean): Promise<number> {
    const entries = await this.backend.quarantine.list();
    let n = 0;
    for (const e of entries) {
      if (e.releasing === undefined || this.hosts.has(e.address) || !match(e.address)) continue;
      if (this.backend.hosts?.(e.address) === false) continue;
      const created = this.#createHost(e.address);
      if (created instanceof TroupeError) {
        this.logger.warn({ agent: e.address, code: created.code }, created.message);
        continue;
      }
      this.hosts.set(e.address, created);
      created.release();
      n++;
    }
    return n;
  }

  quarantined(): Promise<QuarantineEntry[]> {
    return this.backend.quarantine.list();
  }

  /** Deliveries for agents being rebuilt by replay: they wait, in order, until it is done. */
  readonly #rebuilding = new Map<string, Delivery[]>();

  async replay(ref: AgentRef | string, options: ReplayRequest = {}): Promise<ReplayReport> {
    this.#checkRunning();
    const address = this.#addressOf(ref);
    const { type } = parseAgentAddress(address);
    const def = this.definitions.get(type);
    if (def === undefined) {
      throw new TroupeError(ErrorCode.UNKNOWN_AGENT, `no agent type "${type}" is defined here`, {
        details: { address },
      });
    }
    const backend = this.backend;
    if (backend.history === undefined) {
      throw new TroupeError(
        ErrorCode.INVALID_STATE,
        `the ${backend.kind} backend keeps no message history to replay`,
      );
    }
    const fromSequence = options.fromSequence ?? 1;
    if (!Number.isSafeInteger(fromSequence) || fromSequence < 1) {
      throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "fromSequence must be an integer >= 1");
    }
    const run = async (toSequence: number) => {
      const replayOptions = options.onStep === undefined ? {} : { onStep: options.onStep };
      if (toSequence < fromSequence) return replayAgent(def, address, [], replayOptions);
      const sealing = this.#sealing;
      const history = backend.history!(
        address,
        sealing === undefined
          ? { fromSequence, toSequence }
          : { fromSequence, toSequence, decode: (bytes) => sealing.openStored(bytes) },
      );
      return replayAgent(def, address, history, replayOptions);
    };
    if (options.dryRun) {
      const stored = await backend.snapshots.get(address);
      const toSequence = stored?.record.lastSequence ?? 0;
      return { ...(await run(toSequence)), dryRun: true, stored: false, toSequence };
    }
    for (let attempt = 1; ; attempt++) {
      const held: Delivery[] = [];
      this.#rebuilding.set(address, held);
      try {
        await this.passivateWhere((a) => a === address);
        await this.waitForPassivation(address);
        const stored = await backend.snapshots.get(address);
        const toSequence = stored?.record.lastSequence ?? 0;
        if (stored !== undefined && fromSequence > toSequence) {
          // nothing to replay from there: storing the initial state would wipe the agent
          throw new TroupeError(
            ErrorCode.INVALID_ARGUMENT,
            `replay of ${address}: its stored state covers inbox sequences up to ${toSequence}, so there is nothing to rebuild from ${fromSequence}; its stored state is unchanged`,
            { details: { address, fromSequence, toSequence } },
          );
        }
        const result = await run(toSequence);
        if (stored === undefined) return { ...result, dryRun: false, stored: false, toSequence };
        if (result.children.length > 0) {
          throw new TroupeError(
            ErrorCode.INVALID_STATE,
            `replay of ${address}: its history ends in a state with child actors running (${result.children.join(", ")}), which a replay does not run; rebuild it when it is idle. Its stored state is unchanged`,
            { details: { address, children: result.children } },
          );
        }
        if (result.failed > 0) {
          const first = result.steps.find((s) => s.outcome === "failed");
          throw new TroupeError(
            ErrorCode.INVALID_STATE,
            `replay of ${address}: ${result.failed} message(s) failed (the first at inbox sequence ${first?.sequence}: ${first?.error}); its stored state is unchanged`,
            { details: { address, failed: result.failed, firstFailed: first?.sequence } },
          );
        }
        try {
          await backend.snapshots.put(
            address,
            { ...stored.record, state: result.snapshot, updatedAt: this.clock.now() },
            stored.revision,
          );
        } catch (e) {
          // written meanwhile (an activation elsewhere, e.g. during a shard move): again
          if (e instanceof TroupeError && e.details?.conflict && attempt < 3) continue;
          throw e;
        }
        this.logger.info(
          { agent: address, fromSequence, toSequence, steps: result.steps.length },
          "agent rebuilt from its history",
        );
        return { ...result, dryRun: false, stored: true, toSequence };
      } finally {
        this.#rebuilding.delete(address);
        for (const d of held) this.#route(d);
      }
    }
  }

  parked(limit?: number): Promise<ParkedFrame[]> {
    return this.backend.parked.list(limit);
  }

  use(stage: Stage): void {
    if (!this.config.enableHooks) {
      throw new TroupeError(
        ErrorCode.INVALID_STATE,
        "custom stages are off: create the runtime with enableHooks: true",
      );
    }
    this.pipeline.add(stage);
  }

  stages(): StageInfo[] {
    return this.pipeline.list();
  }

  stats(): Readonly<RuntimeStats> & { activeAgents: number } {
    return { ...this.counters, activeAgents: this.hosts.size };
  }

  // --- passivation and shutdown ----------------------------------------------------------

  #scheduleSweep(): void {
    // the shortest idle timeout in force (the runtime's, or an agent type's own): swept every
    // half of it, so an agent idle for its timeout goes within half a timeout more, not after
    // the runtime-wide 5 s (agents of a 2 s type lived up to 7 s, 3.5× their timeout)
    let idle = this.config.idleTimeoutMs;
    for (const def of this.definitions.values()) {
      const own = def.idleTimeoutMs;
      if (own !== undefined && own > 0 && (idle <= 0 || own < idle)) idle = own;
    }
    if (idle <= 0) return;
    const every = Math.max(10, Math.min(idle / 2, 5_000));
    this.#sweep = this.clock.setTimeout(() => {
      this.#passivateIdle();
      if (this.#running && !this.#stopping) this.#scheduleSweep();
    }, every);
  }

  #passivateIdle(): void {
    const now = this.clock.now();
    for (const host of this.hosts.values()) {
      if (host.busy || host.state !== LifecycleState.ACTIVE) continue;
      const idle =
        host instanceof AgentHost
          ? (host.definition.idleTimeoutMs ?? this.config.idleTimeoutMs)
          : 0;
      if (idle > 0 && now - host.lastActivity >= idle) this.#passivate(host);
    }
  }

  #passivate(host: Host): void {
    this.hosts.delete(host.address);
    this.counters.passivations++;
    const p = host
      .close()
      .catch((err) => this.logger.error({ err, agent: host.address }, "passivation failed"))
      .finally(() => {
        if (this.#passivating.get(host.address) === p) this.#passivating.delete(host.address);
      });
    this.#passivating.set(host.address, p);
  }

  async settled(): Promise<void> {
    // quiet = nothing draining and nothing queued for delivery, twice in a row
    let quietRounds = 0;
    while (quietRounds < 2) {
      await new Promise<void>((r) => setImmediate(r));
      // A BOUND host is still activating (restoring its snapshot, e.g. from KV); a
      // quarantined one that is busy is moving its mailbox to the parking lot.
      const busy = [...this.hosts.values()].filter(
        (h) =>
          h.busy &&
          (h.state === LifecycleState.ACTIVE ||
            h.state === LifecycleState.BOUND ||
            h.state === LifecycleState.QUARANTINED),
      );
      const work = [...this.#orphanWork, ...this.#passivating.values()];
      const undelivered = this.backend.pendingDeliveries?.() ?? 0;
      if (busy.length === 0 && work.length === 0 && undelivered === 0) quietRounds++;
      else {
        quietRounds = 0;
        await Promise.all([...busy.map((h) => h.idle()), ...work]);
      }
    }
  }

  async shutdown(): Promise<void> {
    if (!this.#running || this.#stopping) return;
    this.#stopping = true;
    this.#sweep?.cancel();
    this.#refresh?.cancel();
    this.#unwatch?.();
    const deadline = new Promise<"timeout">((r) => {
      const t = setTimeout(() => r("timeout"), this.config.shutdownTimeoutMs);
      t.unref?.();
    });
    const outcome = await Promise.race([this.settled().then(() => "settled" as const), deadline]);
    if (outcome === "timeout") {
      this.logger.warn(
        {},
        "shutdown: in-flight work did not finish in time; unacknowledged messages stay in the inbox",
      );
    }
    this.#closingHosts = true;
    await Promise.all(
      [...this.hosts.values()].map((h) =>
        h
          .close()
          .catch((err) =>
            this.logger.error({ err, agent: h.address }, "could not persist agent at shutdown"),
          ),
      ),
    );
    await Promise.all(this.#passivating.values());
    this.hosts.clear();
    for (const [id, p] of this.#pending) {
      p.cancel();
      p.reject(new TroupeError(ErrorCode.SHUTDOWN, "the runtime shut down before the reply came"));
      this.#pending.delete(id);
    }
    await this.backend.close();
    this.#running = false;
  }

  /**
   * @internal Passivates every activation whose address matches (a worker giving up a shard):
   * waits for in-flight work, stores snapshots, and hands back messages it still holds.
   */
  async passivateWhere(match: (address: string) => boolean): Promise<number> {
    const hosts = [...this.hosts.values()].filter((h) => match(h.address));
    for (const h of hosts) this.hosts.delete(h.address);
    await Promise.all(
      hosts.map((h) =>
        h
          .close()
          .catch((err) =>
            this.logger.error({ err, agent: h.address }, "could not passivate agent"),
          ),
      ),
    );
    this.counters.passivations += hosts.length;
    return hosts.length;
  }

  /** @internal bound callables and channels register here (channel API). */
  registerHost(host: Host): void {
    if (this.hosts.has(host.address)) {
      throw new TroupeError(ErrorCode.INVALID_STATE, `${host.address} is bound already`);
    }
    this.hosts.set(host.address, host);
  }

  /** @internal */
  openChannel(a: string, b: string, key: Uint8Array, id: string = newMessageId()): Channel {
    const channel = new Channel(id, a, b, key, this.clock.now());
    this.channels.set(channel.id, channel);
    return channel;
  }

  /** @internal */
  get running(): boolean {
    return this.#running && !this.#stopping;
  }

  /** @internal */
  appendFrame(frame: Frame): Promise<Receipt> {
    return this.#append(frame);
  }

  /** @internal */
  appendBytes(bytes: Uint8Array, envelope: Frame["envelope"]): Promise<Receipt> {
    return this.#appendOut({ bytes, envelope }, envelope);
  }
}

/** Starts a runtime. Embedded (in-process) unless a backend is given. */
export async function createRuntime(config: RuntimeConfig = {}): Promise<Runtime> {
  const runtime = new RuntimeCore(config);
  await runtime.start();
  return runtime;
}
