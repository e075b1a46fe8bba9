/**
 * XState action creators that talk to other agents: `sendToAgent`, `reply`, `replyTo`.
 * They run inside the agent's transition; the host collects what they emit and publishes
 * it only after the transition's snapshot is stored (the transactional outbox).
 */
import {
  agentAddress,
  ErrorCode,
  type FrameKind,
  type TraceContext,
  TroupeError,
} from "@troupe/wire";
import type { ActorSystem, EventObject } from "xstate";

// biome-ignore lint/suspicious/noExplicitAny: any actor system, as XState types it
type AnyActorSystem = ActorSystem<any>;

// The action creators default context and event to `any`, as XState's own creators do when
// used outside a typed `setup()`: callers get untyped access rather than `unknown` walls.
// biome-ignore lint/suspicious/noExplicitAny: see above
type AnyContext = any;
// biome-ignore lint/suspicious/noExplicitAny: see above
type AnyEvent = any;

/** Where a deferred reply goes: capture it with `currentRequest()` and keep it in context. */
export interface ReplyToken {
  to: string;
  correlationId: string;
  /** The request's trace context (set while tracing): the deferred reply joins its trace. */
  trace?: TraceContext;
}

/** What the host knows about the message being handled. */
export interface MessageInfo {
  messageId: string;
  from: string;
  kind: FrameKind;
  /** The inbox sequence of this message. */
  sequence: number;
  /** The sender's own sequence number (per channel when `channel` is set). */
  senderSequence: number;
  /** The channel it came on, if any (the low-level channel API). */
  channel?: string;
  correlationId?: string;
  /** Where a reply to this message goes, if anywhere. */
  replyTarget?: ReplyToken;
}

/** The host side of an agent, as seen by actions. */
export interface Emitter {
  readonly address: string;
  /** `trace`: the parent of the frame's send span (else the message being handled). */
  emit(
    to: string,
    kind: FrameKind,
    payload: unknown,
    correlationId?: string,
    trace?: TraceContext,
  ): void;
  /** An action could not do what it was asked; reported to the agent's logger and metrics. */
  fault(error: TroupeError): void;
}

let currentEmitter: Emitter | undefined;
let currentMessageInfo: MessageInfo | undefined;
const emitters = new WeakMap<AnyActorSystem, Emitter>();

/** @internal Used by the host around each transition it drives. */
export function enterScope(emitter: Emitter, info: MessageInfo | undefined): void {
  currentEmitter = emitter;
  currentMessageInfo = info;
}

/** @internal */
export function exitScope(): void {
  currentEmitter = undefined;
  currentMessageInfo = undefined;
}

/** @internal Lets actions that run later (after an invoked promise, a delay) find their host. */
export function registerSystem(system: AnyActorSystem, emitter: Emitter): void {
  emitters.set(system, emitter);
}

function emitterFor(system: AnyActorSystem | undefined): Emitter {
  const e = currentEmitter ?? (system === undefined ? undefined : emitters.get(system));
  if (e === undefined) {
    throw new TroupeError(
      ErrorCode.INVALID_STATE,
      "sendToAgent/reply used outside a Troupe agent: run the machine with createRuntime()",
    );
  }
  return e;
}

/** The message being handled, while its transition runs (undefined otherwise). */
export function currentMessage(): MessageInfo | undefined {
  const m = currentMessageInfo;
  if (m === undefined) return undefined;
  const info: MessageInfo = {
    messageId: m.messageId,
    from: m.from,
    kind: m.kind,
    sequence: m.sequence,
    senderSequence: m.senderSequence,
  };
  if (m.channel !== undefined) info.channel = m.channel;
  if (m.correlationId !== undefined) info.correlationId = m.correlationId;
  const target = m.replyTarget;
  if (target !== undefined) info.replyTarget = target;
  return info;
}

/**
 * The reply token of the request being handled, to answer it later with `replyTo`:
 * `assign({ pending: () => currentRequest() })`.
 */
export function currentRequest(): ReplyToken | undefined {
  return currentMessageInfo?.replyTarget;
}

interface ActionArgsLike<TContext, TEvent> {
  context: TContext;
  event: TEvent;
  system?: AnyActorSystem;
}

type Expr<TContext, TEvent, T> = T | ((args: { context: TContext; event: TEvent }) => T);

function resolve<TContext, TEvent, T>(
  expr: Expr<TContext, TEvent, T>,
  args: ActionArgsLike<TContext, TEvent>,
): T {
  return typeof expr === "function"
    ? (expr as (a: { context: TContext; event: TEvent }) => T)(args)
    : expr;
}

export interface SendToAgentOptions<TContext, TEvent> {
  /**
   * Correlates what comes back: a `troupe.error` for this message (and a `reply` to it) carries
   * this id as `correlationId`. Default: the message id.
   */
  correlationId?: Expr<TContext, TEvent, string>;
}

/** Send `event` to agent `type/key` (delivered once, after this transition is stored). */
export function sendToAgent<
  TContext = AnyContext,
  TEvent extends EventObject = AnyEvent,
  TSent extends EventObject = EventObject,
>(
  type: Expr<TContext, TEvent, string>,
  key: Expr<TContext, TEvent, string>,
  event: Expr<TContext, TEvent, TSent>,
  options?: SendToAgentOptions<TContext, TEvent>,
): (args: ActionArgsLike<TContext, TEvent>) => void {
  return (args) => {
    const emitter = emitterFor(args.system);
    let to: string;
    try {
      to = agentAddress(resolve(type, args), resolve(key, args));
    } catch (e) {
      emitter.fault(e as TroupeError);
      return;
    }
    const correlationId =
      options?.correlationId === undefined ? undefined : resolve(options.correlationId, args);
    emitter.emit(to, "event", resolve(event, args), correlationId);
  };
}

/**
 * Answer the message being handled: a request from a client gets its response; a message
 * from another agent gets `event` delivered back to that agent.
 */
export function reply<
  TContext = AnyContext,
  TEvent extends EventObject = AnyEvent,
  TSent extends EventObject = EventObject,
>(event: Expr<TContext, TEvent, TSent>): (args: ActionArgsLike<TContext, TEvent>) => void {
  return (args) => {
    const emitter = emitterFor(args.system);
    const target = currentMessageInfo?.replyTarget;
    if (target === undefined) {
      emitter.fault(
        new TroupeError(
          ErrorCode.INVALID_STATE,
          currentMessageInfo === undefined
            ? "reply() ran outside the handling of a message: keep currentRequest() in context and use replyTo()"
            : `reply(): message ${currentMessageInfo.messageId} from ${currentMessageInfo.from} expects no reply`,
        ),
      );
      return;
    }
    emitter.emit(target.to, "reply", resolve(event, args), target.correlationId);
  };
}

/** Answer a request captured earlier with `currentRequest()` (a deferred reply). */
export function replyTo<
  TContext = AnyContext,
  TEvent extends EventObject = AnyEvent,
  TSent extends EventObject = EventObject,
>(
  token: Expr<TContext, TEvent, ReplyToken | undefined>,
  event: Expr<TContext, TEvent, TSent>,
): (args: ActionArgsLike<TContext, TEvent>) => void {
  return (args) => {
    const emitter = emitterFor(args.system);
    const t = resolve(token, args);
    if (t === undefined || typeof t.to !== "string" || typeof t.correlationId !== "string") {
      emitter.fault(new TroupeError(ErrorCode.INVALID_STATE, "replyTo(): no reply token"));
      return;
    }
    emitter.emit(t.to, "reply", resolve(event, args), t.correlationId, t.trace);
  };
}
