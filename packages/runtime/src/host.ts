/**
 * Hosts: one per live activation. A host owns its mailbox (per-agent FIFO, one message at a
 * time), runs the checkpoint pipeline, retries failed handlers with backoff, quarantines, and
 * commits in groups: one snapshot write covers a batch, and only then are the batch's
 * outputs published and its deliveries acknowledged.
 */
import { SpanStatusCode } from "@opentelemetry/api";
import {
  deriveMessageId,
  type Envelope,
  ErrorCode,
  type ErrorInfo,
  type Frame,
  type FrameKind,
  newMessageId,
  peekEnvelope,
  type TraceContext,
  TroupeError,
  toErrorInfo,
} from "@troupe/wire";
import { type AnyActor, type AnyStateMachine, createActor } from "xstate";
import {
  type Emitter,
  enterScope,
  exitScope,
  type MessageInfo,
  type ReplyToken,
  registerSystem,
} from "./actions.js";
import type { AgentDefinition } from "./agent.js";
import { findInlineChildren } from "./agent.js";
import type {
  Delivery,
  HeldMessage,
  Outgoing,
  ParkingLot,
  QuarantineEntry,
  SnapshotRecord,
} from "./backend.js";
import type { HandledMessage, Kernel } from "./kernel.js";
import { isPromise, type StageContext, type StageResult } from "./pipeline.js";
import {
  activeContext,
  contextFrom,
  type EventAttributes,
  failSpan,
  type ProcessSpan,
  startProcessSpan,
  startSendSpan,
  stateString,
  traceContextOf,
  traceLogFields,
  tracingEnabled,
} from "./tracing.js";

export const LifecycleState = {
  BOUND: "BOUND",
  ACTIVE: "ACTIVE",
  QUARANTINED: "QUARANTINED",
  UNBOUND: "UNBOUND",
} as const;
export type LifecycleState = (typeof LifecycleState)[keyof typeof LifecycleState];

export interface HostStatus {
  state: LifecycleState;
  channelCount: number;
  pendingMessageCount: number;
}

/** Messages handled per group commit, at most; also the page size of held messages on release. */
const MAX_BATCH = 512;

/** The event an agent gets when something it sent failed at the receiver. */
export interface TroupeErrorEvent {
  type: "troupe.error";
  error: ErrorInfo;
  from: string;
  correlationId?: string;
}

type Outcome = "ok" | "skipped" | "rejected" | "failed";

/** An envelope read ahead of its frame, and whether the frame is sealed. */
export type Peeked = ReturnType<typeof peekEnvelope>;

/** What `failureNotice` needs of the envelope of a message that failed. */
export type FailedEnvelope = Pick<
  Envelope,
  "kind" | "from" | "messageId" | "replyTo" | "correlationId"
>;

/**
 * Where the sender of a failed message is told, and what: to its `replyTo` (else its
 * sender), under its correlation id (else its message id), the error as the wire carries it.
 * Undefined for an error notice or a reply: an error is never answered with an error.
 */
export function failureNotice(
  env: FailedEnvelope,
  err: TroupeError,
): { to: string; correlationId: string; error: ErrorInfo } | undefined {
  if (env.kind === "error" || env.kind === "reply") return undefined;
  return {
    to: env.replyTo ?? env.from,
    correlationId: env.correlationId ?? env.messageId,
    error: toErrorInfo(err),
  };
}

export abstract class Host implements Emitter {
  readonly address: string;
  protected readonly kernel: Kernel;
  state: LifecycleState = LifecycleState.BOUND;
  protected readonly mailbox: Delivery[] = [];
  /** The last inbox sequence whose effects are applied (dedup of redeliveries). */
  lastSequence = 0;
  protected sent = 0;
  /** Outputs of the current batch, published after the commit. */
  protected outputs: Frame[] = [];
  /** Outputs of the message being handled (dropped if its handler fails). */
  protected pendingOutputs: Frame[] = [];
  protected currentInput: MessageInfo | undefined;
  #draining: Promise<void> | undefined;
  #activated = false;
  /** State changed outside message handling (an invoked promise settled, a delay fired). */
  #dirty = false;
  lastActivity: number;
  closed = false;
  /** A release is delivering the held messages: they go before anything in the mailbox. */
  #releasing = false;
  /** Held messages read back from the parking lot for release, in order. */
  #heldQueue: Delivery[] = [];
  /** Held messages in the parking lot not read back yet (as far as this activation knows). */
  #heldStored = 0;
  /** The inbox sequence of the last held message read back (the next page starts after it). */
  #heldAfter = 0;

  constructor(address: string, kernel: Kernel) {
    this.address = address;
    this.kernel = kernel;
    this.lastActivity = kernel.clock.now();
  }

  get busy(): boolean {
    return (
      this.#draining !== undefined ||
      this.mailbox.length > 0 ||
      this.#kickScheduled ||
      this.#releasing
    );
  }

  /** Messages waiting for this agent: in the mailbox, and held for it while quarantined. */
  get pendingMessageCount(): number {
    return this.mailbox.length + this.#heldQueue.length + this.#heldStored;
  }

  abstract get channelCount(): number;

  status(): HostStatus {
    return {
      state: this.state,
      channelCount: this.channelCount,
      pendingMessageCount: this.pendingMessageCount,
    };
  }

  enqueue(d: Delivery): void {
    // (lastActivity is stamped when a drain ends; a non-empty mailbox is never idle anyway)
    this.mailbox.push(d);
    // (a quarantined host drains too: it moves its mailbox to the parking lot)
    if (this.#draining === undefined && this.#backoff === undefined && !this.#kickScheduled) {
      // start on a microtask: deliveries handed over in the same turn join this first batch
      // (one group commit for all of them instead of one for the first and one for the rest)
      this.#kickScheduled = true;
      queueMicrotask(() => {
        this.#kickScheduled = false;
        if (
          this.#draining === undefined &&
          this.#backoff === undefined &&
          this.mailbox.length > 0
        ) {
          this.kick();
        }
      });
    }
  }

  #kickScheduled = false;

  /** Starts draining unless already draining; resolves when the mailbox is handled. */
  kick(): Promise<void> {
    if (this.#draining !== undefined) return this.#draining;
    const p = this.#drain().finally(() => {
      this.#draining = undefined;
      this.lastActivity = this.kernel.clock.now();
      // more arrived while finishing up, or a release began (unless a reset is waiting out
      // its backoff)
      if (
        (this.mailbox.length > 0 || (this.#releasing && this.state === LifecycleState.ACTIVE)) &&
        (this.state === LifecycleState.ACTIVE || this.state === LifecycleState.QUARANTINED) &&
        !this.closed &&
        this.#backoff === undefined
      ) {
        this.kick();
      }
    });
    this.#draining = p;
    return p;
  }

  /** Resolves once the current drain (and a pending restart after a failure) is over. */
  async idle(): Promise<void> {
    while (this.#draining !== undefined || this.#backoff !== undefined) {
      await (this.#draining ?? this.#backoff);
    }
  }

  async #drain(): Promise<void> {
    try {
      if (!this.#activated && this.state === LifecycleState.QUARANTINED) {
        // quarantined before it (re)started: park its messages without starting it
        await this.#parkMailbox();
        return;
      }
      if (!this.#activated) {
        // not ready = it could not start and is quarantined: its messages are held
        if (!(await this.activate())) {
          if (this.state === LifecycleState.QUARANTINED) await this.#parkMailbox();
          return;
        }
        this.#activated = true;
        if (this.state === LifecycleState.BOUND) this.state = LifecycleState.ACTIVE;
      }
      while (!this.closed) {
        if (this.state === LifecycleState.QUARANTINED) {
          // what was read back for a release stays in the parking lot, in its place
          this.#dropHeldQueue();
          await this.#parkMailbox();
          break;
        }
        if (this.state !== LifecycleState.ACTIVE) break;
        if (this.#releasing) {
          // held messages first, page by page; new ones wait in the mailbox meanwhile
          if (this.#heldQueue.length === 0 && !(await this.#readHeld())) {
            await this.#finishRelease();
            continue;
          }
          await this.#runBatch(this.#heldQueue);
          continue;
        }
        if (this.mailbox.length === 0) break;
        await this.#runBatch(this.mailbox);
      }
      if ((this.#dirty || this.outputs.length > 0) && this.#activated) {
        this.#dirty = false;
        await this.#commit([], true);
      }
    } catch (e) {
      if (e instanceof TroupeError && e.code === ErrorCode.STORAGE_ERROR && e.details?.conflict) {
        this.#abandon(e);
      } else {
        this.#reset(e);
      }
    }
  }

  #resets = 0;

  /**
   * Something below the handler failed (storage, transport). Keep the mailbox in order, drop
   * the in-memory state and start again from the stored snapshot after a backoff: inputs the
   * snapshot covers are skipped, its outbox is published again.
   */
  #reset(e: unknown): void {
    this.#resets++;
    const delay = Math.min(retryDelay(this.kernel.config.retryDelayMs, this.#resets), 30_000);
    this.kernel.logger.error(
      { err: e, agent: this.address, retryInMs: delay },
      "agent host failed below its handler; restarting it from its stored state",
    );
    this.stopActor();
    this.#activated = false;
    this.#dirty = false;
    this.outputs = [];
    // held messages read back for a release stay in the lot (unacknowledged): read again
    this.#dropHeldQueue();
    const backoff = this.kernel.sleep(delay).then(() => {
      this.#backoff = undefined;
      // a release under way goes on even when nothing new waits in the mailbox
      if (!this.closed && (this.mailbox.length > 0 || this.#releasing)) this.kick();
    });
    this.#backoff = backoff;
  }

  /** Set while a restart after a failure waits out its backoff. */
  #backoff: Promise<void> | undefined;

  /** Another activation owns this agent now (its snapshot moved on): give everything back. */
  #abandon(e: unknown): void {
    // a fenced worker says so once (membership), not once for every agent it had active
    const fenced = e instanceof TroupeError && e.details?.fenced === true;
    (fenced ? this.kernel.logger.debug : this.kernel.logger.error).call(
      this.kernel.logger,
      { err: e, agent: this.address },
      "agent is owned elsewhere now; this activation stops and hands its messages back",
    );
    const held = this.mailbox.splice(0);
    for (const d of held) d.nak();
    this.#dropHeldQueue();
    this.closed = true;
    this.kernel.forget(this);
    this.stopActor();
  }

  /**
   * Quarantined: each message goes to the parking lot (durably, in order) and only then is
   * its inbox copy acknowledged, so the shard's consumer keeps flowing for the other agents.
   * A failure to park throws: the mailbox stays as it is and the reset retries later.
   */
  async #parkMailbox(): Promise<void> {
    while (this.mailbox.length > 0 && this.state === LifecycleState.QUARANTINED && !this.closed) {
      const d = this.mailbox[0]!;
      if (this.#activated && d.sequence <= this.lastSequence) {
        // its effects are in the stored snapshot already (a redelivery)
        this.mailbox.shift();
        this.kernel.counters.skipped++;
        d.ack();
        continue;
      }
      await this.#holdBatch();
    }
  }

  #heldMessage(d: Delivery): HeldMessage {
    const m: HeldMessage = { to: this.address, sequence: d.sequence };
    if (d.frame !== undefined) m.frame = d.frame;
    else if (d.bytes !== undefined) m.bytes = d.bytes;
    return m;
  }

  /**
   * Holds the head of the mailbox in one call (up to MAX_BATCH messages, stopping before a
   * redelivery its snapshot covers); acknowledges what was stored. What was not stays at the
   * head of the mailbox, in order, and the failure goes to the reset like any other.
   */
  async #holdBatch(): Promise<void> {
    const lot = this.kernel.backend.parked;
    const batch: Delivery[] = [];
    for (const d of this.mailbox) {
      if (batch.length >= MAX_BATCH) break;
      if (this.#activated && d.sequence <= this.lastSequence) break;
      batch.push(d);
    }
    const messages = batch.map((d) => this.#heldMessage(d));
    const { stored, error } =
      lot.holdMany !== undefined ? await lot.holdMany(messages) : await holdEach(lot, messages);
    for (const d of batch.slice(0, stored)) {
      if (this.mailbox[0] === d) this.mailbox.shift();
      this.#heldStored++;
      this.kernel.counters.held++;
      d.ack();
    }
    if (stored < batch.length) {
      throw (
        error ??
        new TroupeError(ErrorCode.STORAGE_ERROR, `could not hold the messages of ${this.address}`)
      );
    }
  }

  /** Reads the next page of held messages; false when none is left. */
  async #readHeld(): Promise<boolean> {
    const page = await this.kernel.backend.parked.held(this.address, {
      after: this.#heldAfter,
      limit: MAX_BATCH,
    });
    if (page.length === 0) return false;
    this.#heldAfter = page[page.length - 1]!.sequence;
    this.#heldQueue.push(...page);
    this.#heldStored = Math.max(0, this.#heldStored - page.length);
    return true;
  }

  /** Every held message is delivered: lift the quarantine for good. */
  async #finishRelease(): Promise<void> {
    await this.kernel.backend.parked.clearHeld?.(this.address);
    await this.kernel.backend.quarantine.delete(this.address);
    this.#releasing = false;
    this.#heldStored = 0;
    this.#heldAfter = 0;
    this.kernel.logger.info(
      { ...this.logFields(), agent: this.address },
      "released: held messages delivered",
    );
  }

  #dropHeldQueue(): void {
    this.#heldStored += this.#heldQueue.length;
    this.#heldQueue = [];
    this.#heldAfter = 0;
  }

  /** Picks up the quarantine state stored for this agent at activation. */
  protected async restoreQuarantine(q: QuarantineEntry | undefined): Promise<void> {
    if (q === undefined) return;
    this.#heldStored = await this.kernel.backend.parked.heldCount(this.address);
    this.#heldAfter = 0;
    // a release that was under way (crash, shard move): finish it before new messages
    if (q.releasing !== undefined) this.#releasing = true;
    else this.state = LifecycleState.QUARANTINED;
  }

  async #runBatch(queue: Delivery[]): Promise<void> {
    const batch = queue.splice(0, MAX_BATCH);
    const done: Delivery[] = [];
    let changed = false;
    let stoppedAt = -1;
    for (let i = 0; i < batch.length; i++) {
      const d = batch[i]!;
      let outcome: Outcome;
      const timed = this.kernel.onMessageHandled;
      const t0 = timed === undefined ? 0 : performance.now();
      try {
        const o = this.#process(d);
        outcome = isPromise<Outcome>(o) ? await o : o;
      } catch (e) {
        // nothing of this batch is stored: all of it goes back, to be delivered again
        queue.unshift(...batch);
        this.outputs = [];
        throw e;
      }
      if (timed !== undefined) this.#timed(timed, outcome, t0);
      if (outcome === "failed") {
        stoppedAt = i;
        break;
      }
      done.push(d);
      if (outcome === "ok") changed = true;
      if (this.state !== LifecycleState.ACTIVE) {
        // quarantined by hand while this batch ran: hold the rest
        stoppedAt = i + 1;
        break;
      }
    }
    if (stoppedAt >= 0) queue.unshift(...batch.slice(stoppedAt));
    await this.#commit(done, changed, queue);
  }

  #timed(hook: (m: HandledMessage) => void, outcome: Outcome, t0: number): void {
    try {
      hook({ address: this.address, outcome, durationMs: performance.now() - t0 });
    } catch (err) {
      // a metrics hook must not fail the batch it measures
      this.kernel.logger.warn({ err }, "onMessageHandled threw");
    }
  }

  /** The actor moved on its own (not by a message): store that and publish what it sent. */
  spontaneous(): void {
    this.#dirty = true;
    if (this.#draining === undefined && !this.closed) queueMicrotask(() => this.kick());
  }

  /** `queue`: where `done` goes back to if it cannot be stored (the mailbox, or held ones). */
  async #commit(done: Delivery[], changed: boolean, queue = this.mailbox): Promise<void> {
    if (this.#dirty) {
      this.#dirty = false;
      changed = true;
    }
    if (done.length === 0 && this.outputs.length === 0 && !changed) return;
    const outputs = this.outputs;
    this.outputs = [];
    const last = done.length > 0 ? done[done.length - 1]!.sequence : this.lastSequence;
    let prepared: Outgoing[] | undefined;
    if (changed || outputs.length > 0 || last !== this.lastSequence) {
      try {
        // what goes out is encoded (or sealed) before the state that sent it is stored: an
        // output that can never go must not reach the outbox, which every activation sends
        // again; it fails this batch like a state that cannot be stored
        prepared = this.kernel.prepare(outputs);
        await this.persist(outputs, Math.max(last, this.lastSequence));
      } catch (e) {
        if (isTransient(e)) {
          // nothing of this batch is stored: all of it is handled again after the reset
          queue.unshift(...done);
          throw e;
        }
        if (e instanceof TroupeError && e.code === ErrorCode.STORAGE_ERROR && e.details?.conflict) {
          // another activation owns this agent now: this one must not act any more
          for (const d of done) d.nak();
          throw e;
        }
        // the new state cannot be stored (not serialisable): roll back, hold the batch
        await this.rollback();
        queue.unshift(...done);
        this.lastSequence = done.length > 0 ? done[0]!.sequence - 1 : this.lastSequence;
        await this.enterQuarantine(
          e instanceof TroupeError ? e.message : `snapshot could not be stored: ${String(e)}`,
          "auto",
        );
        return;
      }
    }
    this.lastSequence = Math.max(last, this.lastSequence);
    try {
      await this.kernel.publish(outputs, prepared);
    } catch (e) {
      // Stored but not (all) published: the outbox in the snapshot has them. The batch goes
      // back in line; after the reset the snapshot covers it (skipped, acknowledged) and the
      // outbox is published again (dedup drops what did go out).
      queue.unshift(...done);
      throw e;
    }
    for (const d of done) d.ack();
    this.#resets = 0;
    this.kernel.counters.acked += done.length;
  }

  /** Decode → … → handler for one delivery. Synchronous unless a stage or handler is not. */
  #process(d: Delivery): Outcome | Promise<Outcome> {
    return tracingEnabled() ? this.#processTraced(d) : this.#run(d);
  }

  // --- tracing (only while a tracer provider is registered) -------------------------------

  /** The process span of the message being handled. */
  #span: ProcessSpan | undefined;
  /**
   * The context of the last message processed: what the agent sends later on its own (an
   * invoked promise settling, a delayed transition) follows from the message that led to it.
   */
  #lastContext: ReturnType<typeof activeContext> | undefined;

  /** `#run` inside a CONSUMER span parented by the sender's trace context. */
  #processTraced(d: Delivery): Outcome | Promise<Outcome> {
    let peeked: Peeked | undefined;
    if (d.frame === undefined && d.bytes !== undefined) {
      try {
        peeked = peekEnvelope(d.bytes, this.kernel.config.limits);
      } catch {
        // undecodable: the decode stage refuses it, the span records that
      }
    }
    const envelope = d.frame?.envelope ?? peeked?.envelope;
    this.#span = startProcessSpan(this.kernel, this.address, envelope, d.trace, {
      sequence: d.sequence,
      redelivered: d.redelivered,
      shard: d.shard,
      state: this.stateValue(),
    });
    let o: Outcome | Promise<Outcome>;
    try {
      o = this.#run(d, peeked);
    } catch (e) {
      this.#endSpan(undefined, e);
      throw e;
    }
    if (!isPromise<Outcome>(o)) {
      this.#endSpan(o, undefined);
      return o;
    }
    return o.then(
      (v) => {
        this.#endSpan(v, undefined);
        return v;
      },
      (e: unknown) => {
        this.#endSpan(undefined, e);
        throw e;
      },
    );
  }

  #endSpan(outcome: Outcome | undefined, error: unknown): void {
    const ps = this.#span;
    if (ps === undefined) return;
    this.#span = undefined;
    this.#lastContext = ps.context;
    const span = ps.span;
    if (span.isRecording()) {
      span.setAttribute("troupe.outcome", outcome ?? "error");
      const after = stateString(this.stateValue());
      if (after !== undefined) span.setAttribute("troupe.state.after", after);
      if (error !== undefined) failSpan(span, error);
      else if (outcome === "rejected" || outcome === "failed") {
        span.setStatus({ code: SpanStatusCode.ERROR, message: `message ${outcome}` });
      }
    }
    span.end();
  }

  /** Log fields that tie a log line to the trace of the message being handled, if traced. */
  protected logFields(): { trace_id?: string; span_id?: string } {
    return traceLogFields(this.#span?.span);
  }

  /** Records a decision about the message being handled (quarantine, refusal) on its span. */
  protected spanEvent(name: string, attributes: EventAttributes): void {
    const span = this.#span?.span;
    if (span?.isRecording()) span.addEvent(name, attributes);
  }

  /** The trace context of the message being handled, for a reply token kept for later. */
  currentTrace(): TraceContext | undefined {
    const span = this.#span?.span;
    return span === undefined ? undefined : traceContextOf(span);
  }

  /** Starts and ends the PRODUCER span of a frame this host sends; sets its `trace`. */
  #traceSend(frame: Frame, parent: TraceContext | undefined): void {
    const ctx =
      parent !== undefined
        ? contextFrom(parent)
        : (this.#span?.context ?? this.#lastContext ?? activeContext());
    // ended at once: the frame goes out after the batch's snapshot is stored (the outbox), and
    // the receiver's process span shows when it arrived
    startSendSpan(this.kernel, frame, ctx).end();
  }

  /** The agent's state value (XState `snapshot.value`), for spans; undefined if none. */
  protected stateValue(): unknown {
    return undefined;
  }

  /** `peeked`: the envelope of `d.bytes`, when read already (for its span). */
  #run(d: Delivery, peeked?: Peeked): Outcome | Promise<Outcome> {
    const ctx = new MessageContext(d, this, peeked);
    let r: ReturnType<Kernel["pipeline"]["run"]>;
    try {
      r = this.kernel.pipeline.run(ctx);
    } catch (e) {
      return this.reject(ctx, e).then(() => "rejected" as const);
    }
    if (isPromise(r)) {
      return r.then(
        (v) => this.#afterPipeline(ctx, v),
        (e: unknown) => this.reject(ctx, e).then(() => "rejected" as const),
      );
    }
    return this.#afterPipeline(ctx, r);
  }

  #afterPipeline(ctx: MessageContext, r: StageResult): Outcome | Promise<Outcome> {
    if (r !== undefined) {
      this.kernel.counters.skipped++;
      return "skipped";
    }
    return this.#handle(ctx);
  }

  /** A stage refused the message: park it with its reason and tell its sender. */
  protected async reject(ctx: StageContext, e: unknown): Promise<void> {
    const err =
      e instanceof TroupeError
        ? e
        : new TroupeError(ErrorCode.HANDLER_ERROR, `a pipeline stage failed: ${String(e)}`, {
            cause: e,
          });
    this.kernel.counters.rejected++;
    this.kernel.logger.warn(
      { ...this.logFields(), agent: this.address, code: err.code, sequence: ctx.delivery.sequence },
      `message rejected: ${err.message}`,
    );
    const parked = {
      sequence: ctx.delivery.sequence,
      to: this.address,
      reason: err.message,
      code: err.code,
      at: this.kernel.clock.now(),
    };
    const bytes = ctx.delivery.bytes;
    // a frame that came sealed is parked sealed, as it came: never opened at rest
    await this.kernel.backend.parked.park(
      ctx.frame !== undefined && (bytes === undefined || ctx.envelope?.channel === undefined)
        ? { ...parked, frame: ctx.frame }
        : bytes !== undefined
          ? { ...parked, bytes }
          : parked,
    );
    if (ctx.envelope !== undefined) this.errorToSender(ctx.envelope, err);
    const from = ctx.envelope?.from ?? this.#readableSender(ctx.delivery);
    this.spanEvent("troupe.message.rejected", {
      "troupe.error.code": err.code,
      "troupe.error.message": err.message,
    });
    if (from !== undefined) {
      const quarantined = this.kernel.refusedFrom(from, err);
      if (quarantined !== undefined) {
        this.spanEvent("troupe.quarantine", {
          "troupe.quarantine.address": from,
          "troupe.quarantine.reason": quarantined,
          "troupe.quarantine.by": "auto",
          "troupe.quarantine.refuse_frames": true,
        });
      }
    }
  }

  /**
   * The sender named by a frame that failed before its envelope was taken (an unsealed frame
   * whose body does not decode): its envelope may still be readable, and the refusal is then
   * counted against that sender.
   */
  #readableSender(d: Delivery): string | undefined {
    if (d.bytes === undefined) return undefined;
    try {
      return peekEnvelope(d.bytes, this.kernel.config.limits).envelope.from;
    } catch {
      return undefined;
    }
  }

  /** Tells the sender of a message that it failed (see `failureNotice`), unless it is this agent. */
  protected errorToSender(env: FailedEnvelope, err: TroupeError): void {
    const notice = failureNotice(env, err);
    if (notice === undefined || notice.to === this.address) return;
    this.outputs.push(
      this.makeFrame(notice.to, "error", notice.error, notice.correlationId, env.messageId),
    );
  }

  #handle(ctx: MessageContext): Outcome | Promise<Outcome> {
    // the context doubles as the MessageInfo actions see: no allocation per message
    const info: MessageInfo = ctx;
    const first = this.#attempt(ctx.event, info);
    if (first === undefined) return "ok";
    if (isPromise(first)) {
      return first.then((err) => (err === undefined ? "ok" : this.#retry(ctx, info, err)));
    }
    return this.#retry(ctx, info, first);
  }

  /** One try of the handler: undefined on success, else the error (or a promise of either). */
  #attempt(event: unknown, info: MessageInfo): unknown {
    if (this.pendingOutputs.length > 0) this.pendingOutputs = [];
    this.currentInput = info;
    let result: unknown;
    try {
      result = this.apply(event, info);
    } catch (e) {
      result = e ?? new Error("handler failed");
    }
    if (isPromise(result)) {
      return result.then(
        () => this.#settleAttempt(undefined),
        (e: unknown) => this.#settleAttempt(e ?? new Error("handler failed")),
      );
    }
    return this.#settleAttempt(result);
  }

  #settleAttempt(error: unknown): unknown {
    this.currentInput = undefined;
    if (error === undefined) {
      if (this.pendingOutputs.length > 0) {
        for (const f of this.pendingOutputs) this.outputs.push(f);
        this.pendingOutputs = [];
      }
      this.kernel.counters.processed++;
      return undefined;
    }
    if (this.pendingOutputs.length > 0) this.pendingOutputs = [];
    this.kernel.counters.failed++;
    return error;
  }

  /** The handler failed: retry with backoff from the state before the message, then quarantine. */
  async #retry(ctx: MessageContext, info: MessageInfo, firstError: unknown): Promise<Outcome> {
    const { maxRetries, retryDelayMs } = this.kernel.config;
    let lastError = firstError;
    await this.recover();
    for (let attempt = 1; attempt <= maxRetries; attempt++) {
      this.kernel.counters.retries++;
      await this.kernel.sleep(retryDelay(retryDelayMs, attempt));
      if (this.closed) return "failed";
      let error = this.#attempt(ctx.event, info);
      if (isPromise(error)) error = await error;
      if (error === undefined) return "ok";
      lastError = error;
      this.spanEvent("troupe.handler.failed", {
        "troupe.attempt": attempt + 1,
        "troupe.error.message": errorMessage(error),
      });
      await this.recover();
    }
    const env = ctx.envelope!;
    const reason = `handler failed ${maxRetries + 1} times on message ${env.messageId}: ${errorMessage(lastError)}`;
    this.kernel.logger.warn(
      { ...this.logFields(), agent: this.address, err: lastError },
      "quarantining agent",
    );
    // (the batch puts the failed message back first in line: release delivers it again)
    this.errorToSender(
      env,
      new TroupeError(ErrorCode.QUARANTINE_TRIGGERED, `${this.address} is quarantined: ${reason}`, {
        cause: lastError,
      }),
    );
    this.spanEvent("troupe.quarantine", {
      "troupe.quarantine.address": this.address,
      "troupe.quarantine.reason": reason,
      "troupe.quarantine.by": "auto",
    });
    await this.enterQuarantine(reason, "auto");
    return "failed";
  }

  /** `refuseFrames`: quarantined as a sender too (see QuarantineEntry). */
  async enterQuarantine(
    reason: string,
    by: "auto" | "manual",
    refuseFrames = false,
  ): Promise<QuarantineEntry> {
    this.state = LifecycleState.QUARANTINED;
    // a release under way stops here: what it did not deliver stays held, in order
    this.#releasing = false;
    this.kernel.counters.quarantines++;
    const entry: QuarantineEntry = {
      address: this.address,
      reason,
      by,
      since: this.kernel.clock.now(),
    };
    if (refuseFrames) entry.refuseFrames = true;
    await this.kernel.backend.quarantine.set(entry);
    return entry;
  }

  /**
   * Back to ACTIVE: the held messages are delivered first, in order, then what waits in the
   * mailbox; the quarantine entry is deleted once none is left. Returns how many are held.
   */
  release(): number {
    const n = this.pendingMessageCount;
    if (this.state === LifecycleState.QUARANTINED) this.state = LifecycleState.ACTIVE;
    this.#releasing = true;
    this.#heldAfter = 0;
    if (this.#backoff === undefined && !this.closed) void this.kick();
    return n;
  }

  // --- Emitter (actions) -----------------------------------------------------------------

  emit(
    to: string,
    kind: FrameKind,
    payload: unknown,
    correlationId?: string,
    trace?: TraceContext,
  ): void {
    const input = this.currentInput;
    const frame = this.makeFrame(to, kind, payload, correlationId, input?.messageId, trace);
    if (input !== undefined) this.pendingOutputs.push(frame);
    else {
      this.outputs.push(frame);
      this.spontaneous();
    }
  }

  fault(error: TroupeError): void {
    this.kernel.counters.faults++;
    this.kernel.logger.warn(
      { ...this.logFields(), agent: this.address, code: error.code },
      error.message,
    );
  }

  protected makeFrame(
    to: string,
    kind: FrameKind,
    payload: unknown,
    correlationId: string | undefined,
    inputId: string | undefined,
    trace?: TraceContext,
  ): Frame {
    this.sent++;
    const messageId =
      inputId === undefined
        ? newMessageId()
        : deriveMessageId(inputId, this.pendingOrOutputCount());
    const frame: Frame = {
      envelope: {
        version: 1,
        kind,
        messageId,
        from: this.address,
        to,
        sequence: this.sent,
        timestampNs: this.kernel.clock.nowNs(),
      },
      message: { kind: kind === "error" ? "error" : "data", payload },
    };
    if (correlationId !== undefined) frame.envelope.correlationId = correlationId;
    if (tracingEnabled()) this.#traceSend(frame, trace);
    return frame;
  }

  #outputIndex = 0;
  private pendingOrOutputCount(): number {
    // ids must be the same on a re-run of the same input: index outputs per input message
    return this.#outputIndex++;
  }

  protected resetOutputIndex(): void {
    this.#outputIndex = 0;
  }

  // --- what a kind of host must provide --------------------------------------------------

  /** Load state (snapshot) before the first message; false if it cannot start (quarantined). */
  protected abstract activate(): Promise<boolean>;
  /**
   * Apply one event; return the error if the handler failed, undefined if it succeeded (or a
   * promise that rejects with the error / fulfils on success, for asynchronous handlers).
   */
  protected abstract apply(event: unknown, info: MessageInfo): unknown;
  /** After a failed apply: get back to the state before it. */
  protected abstract recover(): Promise<void>;
  /** After a failed commit: get back to the last stored state. */
  protected abstract rollback(): Promise<void>;
  /** Store state covering everything up to `lastSequence`, with the outbox. */
  protected abstract persist(outbox: Frame[], lastSequence: number): Promise<void>;
  /** Passivate or shut down: final write if needed, then stop. */
  abstract close(): Promise<void>;
  protected abstract stopActor(): void;
}

/** The pipeline's view of one delivery, and the MessageInfo its handler's actions see. */
class MessageContext implements StageContext, MessageInfo {
  readonly delivery: Delivery;
  readonly to: string;
  /** @internal for the built-in stages (saves a lookup per stage per message) */
  readonly host: Host;
  /** @internal for the decode stage: the envelope of `delivery.bytes`, if read already */
  readonly peeked: Peeked | undefined;
  envelope: StageContext["envelope"];
  frame: StageContext["frame"];
  event: unknown;
  #locals: Map<string, unknown> | undefined;

  constructor(d: Delivery, host: Host, peeked: Peeked | undefined) {
    this.delivery = d;
    this.host = host;
    this.peeked = peeked;
    this.to = host.address;
    this.frame = d.frame;
    this.envelope = d.frame?.envelope;
    this.event = d.frame?.message.payload;
  }

  get locals(): Map<string, unknown> {
    this.#locals ??= new Map();
    return this.#locals;
  }

  get messageId(): string {
    return this.envelope!.messageId;
  }
  get from(): string {
    return this.envelope!.from;
  }
  get kind(): FrameKind {
    return this.envelope!.kind;
  }
  get sequence(): number {
    return this.delivery.sequence;
  }
  get senderSequence(): number {
    return this.envelope!.sequence;
  }
  get channel(): string | undefined {
    return this.envelope!.channel;
  }
  get correlationId(): string | undefined {
    return this.envelope!.correlationId;
  }
  /** Replies go to `replyTo`, else to an agent sender; a client's plain event expects none. */
  get replyTarget(): ReplyToken | undefined {
    const env = this.envelope!;
    if (env.kind !== "request" && env.kind !== "event") return undefined;
    const to = env.replyTo ?? (env.from.startsWith("~") ? undefined : env.from);
    if (to === undefined) return undefined;
    const token: ReplyToken = { to, correlationId: env.correlationId ?? env.messageId };
    // a deferred reply (replyTo, maybe much later) stays in the request's trace
    const trace = tracingEnabled() ? this.host.currentTrace() : undefined;
    if (trace !== undefined) token.trace = trace;
    return token;
  }
}

/** Storage or transport trouble that may pass (as opposed to state that can never be stored). */
function isTransient(e: unknown): boolean {
  return (
    e instanceof TroupeError &&
    (e.code === ErrorCode.TRANSPORT_ERROR || (e.retryAfterMs !== undefined && !e.details?.conflict))
  );
}

/** The wait before retry `n` (from 1): `retryDelayMs` first, doubling with each retry. */
function retryDelay(retryDelayMs: number, n: number): number {
  return retryDelayMs * 2 ** (n - 1);
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** An XState agent activation. */
export class AgentHost extends Host {
  readonly definition: AgentDefinition;
  readonly type: string;
  readonly key: string;
  #actor: AnyActor | undefined;
  #revision = 0;
  #actorError: unknown;
  /** The persisted form of the last stored state (for rollback). */
  #stored: unknown;
  #outboxStored = false;

  constructor(
    address: string,
    type: string,
    key: string,
    definition: AgentDefinition,
    kernel: Kernel,
  ) {
    super(address, kernel);
    this.type = type;
    this.key = key;
    this.definition = definition;
  }

  get channelCount(): number {
    return 0;
  }

  protected async activate(): Promise<boolean> {
    await this.kernel.waitForPassivation(this.address);
    let q: QuarantineEntry | undefined;
    const release = await this.kernel.activations.acquire();
    try {
      q = await this.kernel.backend.quarantine.get(this.address);
      const stored = await this.kernel.backend.snapshots.get(this.address);
      if (stored !== undefined) {
        this.#revision = stored.revision;
        this.lastSequence = stored.record.lastSequence;
        this.sent = stored.record.sent;
        this.#stored = stored.record.state;
        if (stored.record.outbox.length > 0) {
          // a crash came between storing and publishing: publish again (dedup drops repeats)
          await this.kernel.publish(stored.record.outbox);
          this.#outboxStored = true;
        }
      }
    } finally {
      release();
    }
    const { maxRetries, retryDelayMs } = this.kernel.config;
    for (let attempt = 0; ; attempt++) {
      try {
        this.#startActor(this.#stored);
        break;
      } catch (e) {
        this.kernel.counters.failed++;
        if (attempt >= maxRetries) {
          await this.#failedToStart(e, attempt + 1);
          return false;
        }
        this.kernel.counters.retries++;
        await this.kernel.sleep(retryDelay(retryDelayMs, attempt + 1));
      }
    }
    this.kernel.counters.activations++;
    await this.restoreQuarantine(q);
    return true;
  }

  /** A machine that throws while starting is a handler failure like any other: quarantine. */
  async #failedToStart(e: unknown, attempts: number): Promise<void> {
    const reason = `agent failed to start ${attempts} times: ${errorMessage(e)}`;
    this.kernel.logger.warn(
      { ...this.logFields(), agent: this.address, err: e },
      "quarantining agent",
    );
    const env = this.mailbox[0]?.frame?.envelope;
    if (env !== undefined) {
      this.errorToSender(
        env,
        new TroupeError(
          ErrorCode.QUARANTINE_TRIGGERED,
          `${this.address} is quarantined: ${reason}`,
          {
            cause: e,
          },
        ),
      );
    }
    await this.enterQuarantine(reason, "auto");
    await this.kernel.publish(this.outputs.splice(0));
  }

  #startActor(persisted: unknown): void {
    const machine = this.definition.machine as AnyStateMachine;
    const options: Record<string, unknown> = {};
    if (persisted !== undefined) options.snapshot = persisted;
    else if (this.definition.input !== undefined) options.input = this.definition.input(this.key);
    this.#actorError = undefined;
    enterScope(this, undefined);
    try {
      const actor = createActor(machine, options);
      // an unobserved actor error is rethrown by XState as an uncaught exception
      actor.subscribe({
        next: () => {
          if (this.currentInput === undefined && this.#actor === actor) this.spontaneous();
        },
        error: (err: unknown) => {
          this.#actorError = err ?? new Error("actor failed");
          if (this.currentInput === undefined && this.#actor === actor) {
            this.kernel.logger.error(
              { ...this.logFields(), agent: this.address, err },
              "agent failed outside message handling; restarting it from its last stored state",
            );
            queueMicrotask(() => {
              if (this.#actor === actor) void this.rollback();
            });
          }
        },
      });
      registerSystem(actor.system, this);
      actor.start();
      this.#actor = actor;
    } finally {
      exitScope();
    }
    const startError = this.#actorError;
    if (startError !== undefined) {
      throw new TroupeError(
        ErrorCode.HANDLER_ERROR,
        `agent ${this.address} failed to start: ${errorMessage(startError)}`,
        {
          cause: startError,
        },
      );
    }
  }

  protected apply(event: unknown, info: MessageInfo): unknown {
    const actor = this.#actor!;
    this.resetOutputIndex();
    this.#before = actor.getSnapshot();
    enterScope(this, info);
    try {
      actor.send(toActorEvent(event, info));
    } catch (e) {
      this.#actorError ??= e;
    } finally {
      exitScope();
    }
    const err =
      this.#actorError ??
      (actor.getSnapshot().status === "error" ? actor.getSnapshot().error : undefined);
    if (err !== undefined) return err;
    return undefined;
  }

  /** The actor's snapshot before the event being applied (to recover from its failure). */
  #before: unknown;

  protected override async recover(): Promise<void> {
    // The actor stopped in error. Start again from the state just before the failed event:
    // earlier messages of this batch succeeded and stay applied.
    const machine = this.definition.machine as AnyStateMachine;
    const before = machine.getPersistedSnapshot(this.#before as never);
    this.stopActor();
    this.#startActor(before);
  }

  protected async rollback(): Promise<void> {
    this.stopActor();
    this.#startActor(this.#stored);
  }

  protected async persist(outbox: Frame[], lastSequence: number): Promise<void> {
    const actor = this.#actor!;
    const inline = findInlineChildren(actor.getSnapshot());
    if (inline.length > 0) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        `agent ${this.address} has child actor(s) ${inline.map((s) => `"${s}"`).join(", ")} with inline logic, which XState cannot persist: register the logic in setup({ actors: { name: logic } }) and invoke or spawn it by name`,
      );
    }
    const state = actor.getPersistedSnapshot();
    const record: SnapshotRecord = {
      state,
      lastSequence,
      outbox,
      sent: this.sent,
      updatedAt: this.kernel.clock.now(),
    };
    this.#revision = await this.kernel.backend.snapshots.put(this.address, record, this.#revision);
    this.#stored = state;
    this.#outboxStored = outbox.length > 0;
    this.kernel.counters.snapshots++;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.idle();
    // messages still held (quarantined, or arrived during close) go back to the inbox for the
    // next activation, wherever it runs
    for (const d of this.mailbox.splice(0)) d.nak();
    if (this.#outboxStored && this.#actor !== undefined) {
      // its outputs are published: clear the outbox so a later activation does not resend
      await this.persist([], this.lastSequence);
    }
    this.stopActor();
    this.state = LifecycleState.BOUND;
  }

  protected stopActor(): void {
    const a = this.#actor;
    this.#actor = undefined;
    if (a !== undefined) {
      try {
        a.stop();
      } catch {
        // stopping a failed actor may throw inside XState; it is gone either way
      }
    }
  }

  protected override stateValue(): unknown {
    return (this.#actor?.getSnapshot() as { value?: unknown } | undefined)?.value;
  }

  /** The live XState snapshot (for status and tests). */
  get snapshot(): unknown {
    return this.#actor?.getSnapshot();
  }

  get persisted(): unknown {
    return this.#actor?.getPersistedSnapshot();
  }
}

/** The event the XState actor sees for an inbound frame. */
export function toActorEvent(
  event: unknown,
  info: Pick<MessageInfo, "kind" | "from" | "correlationId">,
): { type: string } {
  if (info.kind === "error") {
    const e: TroupeErrorEvent = {
      type: "troupe.error",
      error: event as ErrorInfo,
      from: info.from,
    };
    if (info.correlationId !== undefined) e.correlationId = info.correlationId;
    return e;
  }
  return event as { type: string };
}

/** `holdMany` for a parking lot that holds one message at a time: in order, up to a failure. */
async function holdEach(
  lot: ParkingLot,
  messages: readonly HeldMessage[],
): Promise<{ stored: number; error?: unknown }> {
  let stored = 0;
  for (const m of messages) {
    try {
      await lot.hold(m);
    } catch (error) {
      return { stored, error };
    }
    stored++;
  }
  return { stored };
}
