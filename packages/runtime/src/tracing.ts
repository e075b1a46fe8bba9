/**
 * Tracing through `@opentelemetry/api` only: a PRODUCER span for each message sent (`send
 * <type>`) and a CONSUMER span for each delivery a host processes (`process <type>`), linked
 * through the W3C trace context in the envelope's `trace` field. The process that registers
 * an SDK decides where spans go; without one, the hot path pays one cheap check per message.
 */
import {
  type Attributes,
  type Context,
  context,
  createTraceState,
  isSpanContextValid,
  ProxyTracerProvider,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  type SpanOptions,
  SpanStatusCode,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import type { Envelope, Frame, TraceContext } from "@troupe/wire";
import type { Kernel } from "./kernel.js";

/** The instrumentation scope of Troupe's spans. */
export const TRACER_NAME = "@troupe/runtime";

/** What the API's proxy hands out while no SDK is registered. */
const NOOP_PROVIDER = new ProxyTracerProvider().getDelegate();

/**
 * True when a tracer provider other than the API's no-op one is registered. Allocation-free,
 * so the untraced hot path can skip building span names, options and contexts altogether.
 */
export function tracingEnabled(): boolean {
  const p = trace.getTracerProvider();
  // another copy of the API registered the provider: assume tracing, and let isRecording() tell
  return !(p instanceof ProxyTracerProvider) || p.getDelegate() !== NOOP_PROVIDER;
}

function tracer(): Tracer {
  // not cached: a ProxyTracer keeps the first delegate it found, and a provider may be
  // replaced (tests, a process that re-initialises its SDK); called only while tracing
  return trace.getTracer(TRACER_NAME);
}

const PRODUCER: SpanOptions = { kind: SpanKind.PRODUCER };
const CONSUMER: SpanOptions = { kind: SpanKind.CONSUMER };

/**
 * `trace_id` / `span_id` of a span, for a log line about the message it covers (so a log line
 * leads to its trace); nothing without a valid span.
 */
export function traceLogFields(span: Span | undefined): { trace_id?: string; span_id?: string } {
  if (span === undefined) return {};
  const sc = span.spanContext();
  return isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}

/** The span's context as W3C `traceparent` / `tracestate`; undefined for an invalid one. */
export function traceContextOf(span: Span): TraceContext | undefined {
  const sc = span.spanContext();
  if (!isSpanContextValid(sc)) return undefined;
  const flags = (sc.traceFlags & 0xff).toString(16).padStart(2, "0");
  const tc: TraceContext = { traceparent: `00-${sc.traceId}-${sc.spanId}-${flags}` };
  const state = sc.traceState?.serialize();
  if (state !== undefined && state !== "") tc.tracestate = state;
  return tc;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/;

/**
 * The remote parent a W3C trace context names, on top of `base`; `base` itself when the
 * context is absent or malformed (a bad header must not fail the message, only lose its
 * trace).
 */
export function contextFrom(tc: TraceContext | undefined, base: Context = ROOT_CONTEXT): Context {
  if (tc === undefined || typeof tc.traceparent !== "string") return base;
  const m = TRACEPARENT.exec(tc.traceparent.trim().toLowerCase());
  // version ff is invalid; a future version may append fields (hence the optional tail)
  if (m === null || m[1] === "ff" || (m[1] === "00" && tc.traceparent.trim().length !== 55)) {
    return base;
  }
  const sc = {
    traceId: m[2]!,
    spanId: m[3]!,
    traceFlags: Number.parseInt(m[4]!, 16) & 0x01,
    isRemote: true,
    ...(typeof tc.tracestate === "string" && tc.tracestate !== ""
      ? { traceState: createTraceState(tc.tracestate) }
      : {}),
  };
  if (!isSpanContextValid(sc)) return base;
  return trace.setSpanContext(base, sc);
}

/** `type` of `type/key`; `client` for a client inbox (`~id`), `endpoint` for a callable (`#hex`). */
export function destinationKind(address: string): string {
  const c = address.charCodeAt(0);
  if (c === 0x7e) return "client"; // ~
  if (c === 0x23) return "endpoint"; // #
  const slash = address.indexOf("/");
  return slash < 0 ? address : address.slice(0, slash);
}

function setAgentAttributes(span: Span, address: string): void {
  const slash = address.indexOf("/");
  if (slash > 0 && address.charCodeAt(0) !== 0x7e && address.charCodeAt(0) !== 0x23) {
    span.setAttribute("troupe.agent.type", address.slice(0, slash));
    span.setAttribute("troupe.agent.key", address.slice(slash + 1));
  }
}

function setEnvelopeAttributes(span: Span, env: Envelope): void {
  span.setAttribute("messaging.message.id", env.messageId);
  span.setAttribute("troupe.message.kind", env.kind);
  span.setAttribute("troupe.message.from", env.from);
  if (env.correlationId !== undefined) {
    span.setAttribute("messaging.message.conversation_id", env.correlationId);
  }
}

function setCommonAttributes(span: Span, kernel: Kernel, operation: "send" | "process"): void {
  span.setAttribute(
    "messaging.system",
    kernel.backend.kind === "nats" ? "nats" : `troupe.${kernel.backend.kind}`,
  );
  span.setAttribute("messaging.operation.type", operation);
  span.setAttribute("messaging.operation.name", operation);
  const extra = kernel.config.spanAttributes;
  if (extra !== undefined) span.setAttributes(extra);
}

/**
 * Starts the PRODUCER span of `frame` under `parent` and writes its context into the
 * envelope, so the receiver's process span follows from it. Returns the span to end (when
 * the send is done), or undefined when tracing is off. Call only when `tracingEnabled()`.
 */
export function startSendSpan(kernel: Kernel, frame: Frame, parent: Context): Span {
  const env = frame.envelope;
  const span = tracer().startSpan(`send ${destinationKind(env.to)}`, PRODUCER, parent);
  // an unsampled span still carries the trace on, flagged unsampled, for the receiver to follow
  const tc = traceContextOf(span);
  if (tc !== undefined) env.trace = tc;
  if (span.isRecording()) {
    setCommonAttributes(span, kernel, "send");
    span.setAttribute("messaging.destination.name", env.to);
    setEnvelopeAttributes(span, env);
    setAgentAttributes(span, env.to);
    const shard = kernel.backend.shardOf?.(env.to);
    if (shard !== undefined) span.setAttribute("troupe.shard", shard);
  }
  return span;
}

/** Ends a send span when the send settles: an error marks it failed. */
export function endSendSpan<T>(span: Span, p: Promise<T>): Promise<T> {
  return p.then(
    (v) => {
      span.end();
      return v;
    },
    (e: unknown) => {
      failSpan(span, e);
      span.end();
      throw e;
    },
  );
}

export function failSpan(span: Span, e: unknown): void {
  if (!span.isRecording()) return;
  if (e instanceof Error) span.recordException(e);
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: e instanceof Error ? e.message : String(e),
  });
}

/** A started process span and the context its children (the messages sent) hang off. */
export interface ProcessSpan {
  span: Span;
  context: Context;
}

/**
 * Starts the CONSUMER span of one delivery to `address`, parented by the sender's context:
 * the envelope's `trace` (or, when the envelope carries none, the transport's headers).
 */
export function startProcessSpan(
  kernel: Kernel,
  address: string,
  envelope: Envelope | undefined,
  headerTrace: TraceContext | undefined,
  details: { sequence: number; redelivered: boolean; shard: number | undefined; state: unknown },
): ProcessSpan {
  const parent = contextFrom(envelope?.trace ?? headerTrace);
  const span = tracer().startSpan(`process ${destinationKind(address)}`, CONSUMER, parent);
  if (span.isRecording()) {
    setCommonAttributes(span, kernel, "process");
    span.setAttribute("messaging.destination.name", address);
    setAgentAttributes(span, address);
    if (envelope !== undefined) setEnvelopeAttributes(span, envelope);
    span.setAttribute("troupe.inbox.sequence", details.sequence);
    if (details.redelivered) span.setAttribute("troupe.redelivered", true);
    const shard = details.shard ?? kernel.backend.shardOf?.(address);
    if (shard !== undefined) span.setAttribute("troupe.shard", shard);
    const state = stateString(details.state);
    if (state !== undefined) span.setAttribute("troupe.state.before", state);
  }
  return { span, context: trace.setSpan(parent, span) };
}

/** The active context of the caller (a client's own span, under an SDK's context manager). */
export function activeContext(): Context {
  return context.active();
}

/** An XState state value as one attribute string: `"idle"`, or `{"working":"busy"}` as JSON. */
export function stateString(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value);
  } catch {
    return undefined;
  }
}

/** Attributes of a span event (kept as a type here so hosts need not import the API). */
export type EventAttributes = Attributes;
