/**
 * Tracing on the embedded backend: producer spans for sends, consumer spans for processing,
 * parented through the envelope's W3C trace context so that a request, the agent → agent
 * messages it causes and the replies form one trace; quarantine decisions as span events;
 * and nothing at all (no span, no `trace` field) while no tracer provider is registered.
 */
import { type Attributes, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import type { TraceContext } from "@troupe/wire";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { setup } from "xstate";
import { createRuntime, defineAgent, reply, StageOrder } from "../src/index.js";
import { contextFrom, traceContextOf, tracingEnabled } from "../src/tracing.js";
import { asker, counter, fragile, fragileState } from "./fixtures.js";

/** A two-state agent: the span records the state before and after the event. */
const door = defineAgent({
  type: "door",
  machine: setup({
    types: { events: {} as { type: "open" } | { type: "close" } },
  }).createMachine({
    initial: "closed",
    states: {
      closed: { on: { open: { target: "opened", actions: reply({ type: "ok" }) } } },
      opened: { on: { close: { target: "closed", actions: reply({ type: "ok" }) } } },
    },
  }),
});

let exporter: InMemorySpanExporter;
let provider: BasicTracerProvider;

function install(): void {
  exporter = new InMemorySpanExporter();
  provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  trace.setGlobalTracerProvider(provider);
}

afterEach(async () => {
  trace.disable();
  await provider?.shutdown();
});

const spans = (): ReadableSpan[] => exporter.getFinishedSpans();
const parentOf = (s: ReadableSpan): string | undefined => s.parentSpanContext?.spanId;
const attrs = (s: ReadableSpan): Attributes => s.attributes;

/** Envelope trace fields of every frame handled, seen from a hook stage. */
function recordTraces(runtime: Awaited<ReturnType<typeof createRuntime>>) {
  const seen: { to: string; trace: TraceContext | undefined }[] = [];
  runtime.use({
    name: "record-trace",
    order: StageOrder.VALIDATE + 1,
    run(ctx) {
      seen.push({ to: ctx.to, trace: ctx.envelope?.trace });
      return undefined;
    },
  });
  return seen;
}

describe("tracing with a registered tracer provider", () => {
  beforeEach(install);

  it("a request, an agent → agent request/reply and the deferred reply form one trace", async () => {
    const runtime = await createRuntime({
      agents: [asker, counter],
      spanAttributes: { "troupe.worker.id": "w-test" },
    });
    await runtime.ref("counter", "c1").send({ type: "inc", by: 7 });
    await runtime.settled();
    exporter.reset();

    const answer = await runtime.ref("asker", "a1").request({ type: "ask", target: "c1" });
    expect(answer).toEqual({ type: "answer", value: 7 });
    await runtime.settled();
    await runtime.shutdown();

    const all = spans();
    // client send → asker process → send counter → counter process → send asker (reply) →
    // asker process → send client (the deferred reply) → client process
    expect(all.map((s) => s.name).sort()).toEqual(
      [
        "send asker",
        "process asker",
        "send counter",
        "process counter",
        "send asker",
        "process asker",
        "send client",
        "process client",
      ].sort(),
    );
    expect(new Set(all.map((s) => s.spanContext().traceId)).size).toBe(1);

    const byId = new Map(all.map((s) => [s.spanContext().spanId, s]));
    const parent = (s: ReadableSpan) => byId.get(parentOf(s) ?? "");
    const clientSend = all.find((s) => s.name === "send asker" && parentOf(s) === undefined)!;
    expect(clientSend.kind).toBe(SpanKind.PRODUCER);
    const [askProcess, valueProcess] = all
      .filter((s) => s.name === "process asker")
      .sort(
        (a, b) =>
          Number(attrs(a)["troupe.inbox.sequence"]) - Number(attrs(b)["troupe.inbox.sequence"]),
      );
    expect(parent(askProcess!)).toBe(clientSend);
    expect(askProcess!.kind).toBe(SpanKind.CONSUMER);
    const sendCounter = all.find((s) => s.name === "send counter")!;
    expect(parent(sendCounter)).toBe(askProcess);
    const counterProcess = all.find((s) => s.name === "process counter")!;
    expect(parent(counterProcess)).toBe(sendCounter);
    const replyToAsker = all.find((s) => s.name === "send asker" && s !== clientSend)!;
    expect(parent(replyToAsker)).toBe(counterProcess);
    expect(parent(valueProcess!)).toBe(replyToAsker);
    // replyTo() with a token captured while handling "ask": the reply hangs off that message
    const replyToClient = all.find((s) => s.name === "send client")!;
    expect(parent(replyToClient)).toBe(askProcess);
    expect(parent(all.find((s) => s.name === "process client")!)).toBe(replyToClient);

    // messaging and Troupe attributes, and the message id tying a send to its processing
    expect(attrs(clientSend)).toMatchObject({
      "messaging.system": "troupe.embedded",
      "messaging.operation.type": "send",
      "messaging.destination.name": "asker/a1",
      "troupe.agent.type": "asker",
      "troupe.agent.key": "a1",
      "troupe.message.kind": "request",
      "troupe.worker.id": "w-test",
    });
    expect(attrs(askProcess!)).toMatchObject({
      "messaging.system": "troupe.embedded",
      "messaging.operation.type": "process",
      "messaging.destination.name": "asker/a1",
      "messaging.message.id": attrs(clientSend)["messaging.message.id"],
      "troupe.agent.type": "asker",
      "troupe.agent.key": "a1",
      "troupe.outcome": "ok",
      "troupe.worker.id": "w-test",
    });
    expect(attrs(counterProcess)["messaging.message.id"]).toBe(
      attrs(sendCounter)["messaging.message.id"],
    );
    expect(attrs(sendCounter)["troupe.message.from"]).toBe("asker/a1");
  });

  it("records the XState state value before and after the event", async () => {
    const runtime = await createRuntime({ agents: [door] });
    await runtime.ref("door", "d").request({ type: "open" });
    await runtime.settled();
    await runtime.shutdown();
    const process = spans().find((s) => s.name === "process door")!;
    expect(attrs(process)["troupe.state.before"]).toBe("closed");
    expect(attrs(process)["troupe.state.after"]).toBe("opened");
  });

  it("puts each sent frame's context in its envelope's trace field", async () => {
    const runtime = await createRuntime({ agents: [asker, counter], enableHooks: true });
    const seen = recordTraces(runtime);
    await runtime.ref("counter", "c2").send({ type: "inc", by: 1 });
    await runtime.ref("asker", "a2").request({ type: "ask", target: "c2" });
    await runtime.settled();
    await runtime.shutdown();
    expect(seen.length).toBeGreaterThanOrEqual(4);
    const sends = spans().filter((s) => s.kind === SpanKind.PRODUCER);
    for (const { trace: tc } of seen) {
      expect(tc?.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
      // the envelope names the send span that produced it
      const spanId = tc!.traceparent.split("-")[2];
      expect(sends.some((s) => s.spanContext().spanId === spanId)).toBe(true);
    }
  });

  it("records retries and the quarantine decision as events on the process span", async () => {
    fragileState.failing = true;
    const runtime = await createRuntime({ agents: [fragile], maxRetries: 1, retryDelayMs: 1 });
    await runtime.ref("fragile", "f").send({ type: "item", n: 1, poison: true });
    await runtime.settled();
    const process = spans().find((s) => s.name === "process fragile")!;
    expect(process.status.code).toBe(SpanStatusCode.ERROR);
    expect(attrs(process)["troupe.outcome"]).toBe("failed");
    const events = process.events.map((e) => e.name);
    expect(events).toEqual(["troupe.handler.failed", "troupe.quarantine"]);
    const q = process.events.find((e) => e.name === "troupe.quarantine")!;
    expect(q.attributes).toMatchObject({
      "troupe.quarantine.address": "fragile/f",
      "troupe.quarantine.by": "auto",
    });
    expect(String(q.attributes?.["troupe.quarantine.reason"])).toContain("poisoned item 1");
    fragileState.failing = false;
    await runtime.shutdown();
  });

  it("log lines about a message carry its trace and span ids", async () => {
    fragileState.failing = true;
    const lines: Array<{ fields: Record<string, unknown>; msg: string }> = [];
    const keep = (fields: object, msg?: string) =>
      lines.push({ fields: fields as Record<string, unknown>, msg: msg ?? "" });
    const runtime = await createRuntime({
      agents: [fragile],
      maxRetries: 0,
      retryDelayMs: 1,
      logger: { debug() {}, info: keep, warn: keep, error: keep },
    });
    await runtime.ref("fragile", "g").send({ type: "item", n: 1, poison: true });
    await runtime.settled();
    const process = spans().find((s) => s.name === "process fragile")!;
    const quarantining = lines.find((l) => l.msg === "quarantining agent");
    expect(quarantining?.fields).toMatchObject({
      agent: "fragile/g",
      trace_id: process.spanContext().traceId,
      span_id: process.spanContext().spanId,
    });
    fragileState.failing = false;
    await runtime.shutdown();
  });
});

describe("without a tracer provider", () => {
  it("starts no span and leaves the envelope's trace field empty", async () => {
    install();
    trace.disable();
    expect(tracingEnabled()).toBe(false);
    const runtime = await createRuntime({ agents: [asker, counter], enableHooks: true });
    const seen = recordTraces(runtime);
    await runtime.ref("counter", "c").send({ type: "inc", by: 1 });
    await runtime.ref("asker", "a").request({ type: "ask", target: "c" });
    await runtime.settled();
    await runtime.shutdown();
    expect(seen.length).toBeGreaterThanOrEqual(4);
    expect(seen.every((s) => s.trace === undefined)).toBe(true);
    expect(spans()).toEqual([]);
  });
});

describe("W3C trace context", () => {
  it("round-trips traceparent and tracestate, and ignores malformed ones", () => {
    const tc = {
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      tracestate: "congo=t61rcWkgMzE",
    };
    const parent = trace.getSpan(contextFrom(tc))!;
    expect(parent.spanContext()).toMatchObject({
      traceId: "0af7651916cd43dd8448eb211c80319c",
      spanId: "b7ad6b7169203331",
      traceFlags: 1,
      isRemote: true,
    });
    expect(traceContextOf(parent)).toEqual(tc);
    for (const bad of [
      "",
      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
      "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      "00-00000000000000000000000000000000-b7ad6b7169203331-01",
      "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    ]) {
      expect(trace.getSpan(contextFrom({ traceparent: bad }))).toBeUndefined();
    }
  });
});
