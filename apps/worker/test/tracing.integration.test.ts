/**
 * Tracing across processes: a coordinator and two workers (built `dist/main.js`) export spans
 * over OTLP/HTTP (JSON) to a receiver inside this test; the test process is a client with
 * its own SDK exporting to the same receiver. A plan request to a planner on one worker fans
 * out to helpers (at least one on the other worker) and is answered: every span of that flow
 * must share one trace id and hang off each other as send → process → send → process.
 * A raw frame with no envelope trace but a `TraceParent` header (any case) is followed too.
 * With a Jaeger v2 binary (JAEGER_BIN or .troupe/tools/bin/jaeger), the same flow is also
 * queried back from Jaeger's API.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { headers, type NatsConnection } from "@nats-io/transport-node";
import { trace } from "@opentelemetry/api";
import type { ClusterStatus } from "@troupe/coordinator";
import type { PlanReply } from "@troupe/example-demo";
import {
  connect,
  namespaceNames,
  shardOfAddress,
  subjectToken,
  type TroupeClient,
} from "@troupe/nats";
import { startTelemetry, type Telemetry } from "@troupe/telemetry";
import type { NatsServerHandle } from "@troupe/testkit";
import { encodeFrame, newMessageId } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApps, connectedServer, repo, startBalanced, teardown, waitFor } from "./procs.js";

const NAMESPACE = "traced";
const SHARDS = 8;
const WORKERS = ["tw1", "tw2"];
const AGENT_MODULES = [
  join(repo, "examples/demo/dist/index.js"),
  join(repo, "examples/ping-pong/dist/index.js"),
];
/** OTLP span kinds (the API's SpanKind + 1). */
const PRODUCER = 4;
const CONSUMER = 5;

interface OtlpValue {
  stringValue?: string;
  intValue?: number | string;
  boolValue?: boolean;
  doubleValue?: number;
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: { key: string; value: OtlpValue }[];
  events?: { name: string }[];
}
/** A received span with its service and flattened attributes. */
interface Received {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  kind: number;
  attrs: Record<string, string | number | boolean | undefined>;
}

/** An OTLP/HTTP receiver for JSON-encoded traces: keeps every span it is sent. */
class Receiver {
  readonly spans: Received[] = [];
  readonly server: Server;
  /** Also pass each request on to this OTLP/HTTP URL (a Jaeger), when set. */
  forward: string | undefined;
  constructor() {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        if (req.method !== "POST" || req.url !== "/v1/traces") {
          res.writeHead(404).end();
          return;
        }
        const body = Buffer.concat(chunks);
        if (this.forward !== undefined) {
          void fetch(this.forward, {
            method: "POST",
            body,
            headers: { "content-type": "application/json" },
          }).catch(() => {});
        }
        try {
          this.#take(JSON.parse(body.toString("utf8")));
          res.writeHead(200, { "content-type": "application/json" }).end("{}");
        } catch (e) {
          res.writeHead(400).end(String(e));
        }
      });
    });
  }
  #take(body: {
    resourceSpans?: {
      resource?: { attributes?: { key: string; value: OtlpValue }[] };
      scopeSpans?: { spans?: OtlpSpan[] }[];
    }[];
  }): void {
    for (const rs of body.resourceSpans ?? []) {
      const service = flatten(rs.resource?.attributes)["service.name"];
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) {
          this.spans.push({
            service: String(service),
            traceId: s.traceId,
            spanId: s.spanId,
            parentSpanId: s.parentSpanId || undefined,
            name: s.name,
            kind: s.kind,
            attrs: flatten(s.attributes),
          });
        }
      }
    }
  }
  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
  inTrace(traceId: string): Received[] {
    return this.spans.filter((s) => s.traceId === traceId);
  }
}

function flatten(
  attributes: { key: string; value: OtlpValue }[] | undefined,
): Record<string, string | number | boolean | undefined> {
  const out: Record<string, string | number | boolean | undefined> = {};
  for (const { key, value } of attributes ?? []) {
    out[key] =
      value.stringValue ??
      (value.intValue === undefined ? undefined : Number(value.intValue)) ??
      value.boolValue ??
      value.doubleValue;
  }
  return out;
}

const receiver = new Receiver();
let endpoint: string;
let server: NatsServerHandle;
let nc: NatsConnection;
let client: TroupeClient;
let telemetry: Telemetry;
let placement: ClusterStatus;

function ownerOf(address: string): string {
  const shard = shardOfAddress(address, placement.shardCount);
  const owner = placement.workers.find((w) => w.shards.includes(shard))?.id;
  if (owner === undefined) throw new Error(`no worker owns shard ${shard} of ${address}`);
  return owner;
}

function pickKey(prefix: string, wanted: (key: string) => boolean): string {
  for (let i = 0; i < 10_000; i++) {
    const key = `${prefix}-${i}`;
    if (wanted(key)) return key;
  }
  throw new Error(`no key with prefix ${prefix} fits`);
}

/** What the processes need to export here, quickly. */
function otelEnv(service?: string): Record<string, string> {
  const env: Record<string, string> = {
    OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_BSP_SCHEDULE_DELAY: "100",
  };
  if (service !== undefined) env.OTEL_SERVICE_NAME = service;
  return env;
}

beforeAll(async () => {
  endpoint = await receiver.listen();
  await buildApps();
  ({ server, nc } = await connectedServer());
  placement = await startBalanced(
    nc,
    { servers: server.url, namespace: NAMESPACE },
    { shards: SHARDS, workers: WORKERS, agents: AGENT_MODULES, env: otelEnv() },
  );
  // this process is a client with its own SDK, exporting to the same receiver
  telemetry = startTelemetry({
    serviceName: "troupe-test-client",
    env: { ...otelEnv() },
    logger: { info: () => {}, warn: (o, m) => console.warn(m, o) },
  });
  client = await connect({ servers: server.url, namespace: NAMESPACE });
}, 300_000);

afterAll(async () => {
  await client?.close().catch(() => {});
  await telemetry?.shutdown();
  await teardown(server, nc);
  await new Promise((r) => receiver.server.close(r));
}, 60_000);

/** Runs a planner flow under a root span of this process; returns its trace id and key. */
async function tracedPlan(): Promise<{ traceId: string; key: string }> {
  const helperOwners = ["research", "write", "review"].map((r) => ownerOf(`helper/${r}`));
  const key = pickKey("p", (k) => helperOwners.some((o) => o !== ownerOf(`planner/${k}`)));
  const tracer = trace.getTracer("tracing.integration.test");
  const traceId = await tracer.startActiveSpan("test flow", async (root) => {
    try {
      const answer = await client
        .ref("planner", key)
        .request<PlanReply>({ type: "plan", goal: "trace it" }, { timeoutMs: 15_000 });
      expect(answer.type).toBe("plan.done");
      return root.spanContext().traceId;
    } finally {
      root.end();
    }
  });
  return { traceId, key };
}

describe("one trace across a client and two worker processes", () => {
  it("client send → planner process → helper sends → helper processes (other worker) → replies", async () => {
    expect(telemetry.enabled).toBe(true);
    const { traceId, key } = await tracedPlan();
    const planner = `planner/${key}`;
    const plannerWorker = ownerOf(planner);
    // flushes this process's spans; the workers export every 100 ms
    await telemetry.flush();
    const spans = await waitFor(
      "the flow's spans from both workers",
      () => {
        const s = receiver.inTrace(traceId);
        const names = s.map((x) => x.name);
        const ids = new Set(s.map((x) => x.spanId));
        // every parent arrived too (the processes export on their own schedules)
        const whole = s.every((x) => x.parentSpanId === undefined || ids.has(x.parentSpanId));
        return whole &&
          names.filter((n) => n === "process helper").length >= 3 &&
          names.filter((n) => n === "process planner").length >= 4 &&
          names.includes("send client") &&
          names.includes("process client")
          ? s
          : undefined;
      },
      20_000,
    );
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    const parent = (s: Received) => (s.parentSpanId ? byId.get(s.parentSpanId) : undefined);
    const named = (n: string) => spans.filter((s) => s.name === n);

    // the test's root → the client's send → the planner's processing of the request
    const root = named("test flow")[0]!;
    expect(root.service).toBe("troupe-test-client");
    const clientSend = named("send planner").find((s) => parent(s) === root)!;
    expect(clientSend).toBeDefined();
    expect(clientSend).toMatchObject({ kind: PRODUCER, service: "troupe-test-client" });
    expect(clientSend.attrs).toMatchObject({
      "messaging.system": "nats",
      "messaging.operation.type": "send",
      "messaging.destination.name": planner,
      "troupe.agent.type": "planner",
      "troupe.agent.key": key,
      "troupe.shard": shardOfAddress(planner, SHARDS),
      "troupe.message.kind": "request",
    });
    const planProcess = named("process planner").find((s) => parent(s) === clientSend)!;
    expect(planProcess).toBeDefined();
    expect(planProcess).toMatchObject({ kind: CONSUMER, service: "troupe-worker" });
    expect(planProcess.attrs).toMatchObject({
      "messaging.system": "nats",
      "messaging.operation.type": "process",
      "messaging.destination.name": planner,
      "messaging.message.id": clientSend.attrs["messaging.message.id"],
      "troupe.agent.type": "planner",
      "troupe.agent.key": key,
      "troupe.shard": shardOfAddress(planner, SHARDS),
      "troupe.worker.id": plannerWorker,
      "troupe.state.before": "idle",
      "troupe.state.after": "gathering",
      "troupe.outcome": "ok",
    });

    // the fan-out: three task sends from that processing, each processed by its helper, on
    // whichever worker owns it (at least one is the other one)
    const helperSends = named("send helper").filter((s) => parent(s) === planProcess);
    expect(helperSends.map((s) => s.attrs["troupe.agent.key"]).sort()).toEqual([
      "research",
      "review",
      "write",
    ]);
    const workersSeen = new Set<string>();
    for (const send of helperSends) {
      expect(send).toMatchObject({ kind: PRODUCER, service: "troupe-worker" });
      expect(send.attrs["troupe.worker.id"]).toBe(plannerWorker);
      const helper = `helper/${send.attrs["troupe.agent.key"]}`;
      const proc = named("process helper").find((s) => parent(s) === send)!;
      expect(proc).toBeDefined();
      expect(proc.kind).toBe(CONSUMER);
      expect(proc.attrs).toMatchObject({
        "messaging.destination.name": helper,
        "messaging.message.id": send.attrs["messaging.message.id"],
        "troupe.worker.id": ownerOf(helper),
        "troupe.shard": shardOfAddress(helper, SHARDS),
      });
      workersSeen.add(String(proc.attrs["troupe.worker.id"]));
      // the helper answers later (after its work settles) with replyTo: still in this trace,
      // under the processing of the task it answers
      const answer = named("send planner").find((s) => parent(s) === proc)!;
      expect(answer).toBeDefined();
      expect(answer.attrs["troupe.message.kind"]).toBe("reply");
      const answered = named("process planner").find((s) => parent(s) === answer)!;
      expect(answered.attrs["troupe.worker.id"]).toBe(plannerWorker);
    }
    // (the planner was picked so that at least one helper lives on the other worker)
    expect([...workersSeen].some((w) => w !== plannerWorker)).toBe(true);

    // the plan's answer goes back to the client under the request's processing (its token)
    const reply = named("send client").find((s) => parent(s) === planProcess)!;
    expect(reply).toBeDefined();
    expect(reply.attrs["troupe.message.kind"]).toBe("reply");
    const received = named("process client").find((s) => parent(s) === reply)!;
    expect(received.service).toBe("troupe-test-client");

    // nothing of this flow escaped into another trace
    for (const s of spans) expect(byId.has(s.parentSpanId ?? root.spanId) || s === root).toBe(true);
  });

  it("follows a traceparent header in any case when the envelope carries no trace", async () => {
    const key = pickKey("hdr", () => true);
    const to = `pong/${key}`;
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const parentId = "00f067aa0ba902b7";
    const h = headers();
    h.set("TraceParent", `00-${traceId}-${parentId}-01`);
    const messageId = newMessageId();
    const frame = encodeFrame({
      envelope: {
        version: 1,
        kind: "request",
        messageId,
        from: "~raw-publisher",
        to,
        correlationId: messageId,
        replyTo: "~raw-publisher",
        sequence: 1,
        timestampNs: 1n,
      },
      message: { kind: "data", payload: { type: "ping", n: 1 } },
    });
    const subject = namespaceNames(NAMESPACE).inboxSubject(
      shardOfAddress(to, placement.shardCount),
      subjectToken(to),
    );
    await jetstream(nc).publish(subject, frame, { msgID: messageId, headers: h });
    const span = await waitFor(
      "the pong's process span",
      () => receiver.inTrace(traceId).find((s) => s.name === "process pong"),
      20_000,
    );
    expect(span.parentSpanId).toBe(parentId);
    expect(span.attrs).toMatchObject({
      "messaging.message.id": messageId,
      "troupe.worker.id": ownerOf(to),
    });
    // its reply (to a client inbox nobody listens on) is in the same trace
    await waitFor("the pong's reply send", () =>
      receiver
        .inTrace(traceId)
        .find((s) => s.name === "send client" && s.parentSpanId === span.spanId),
    );
  });
});

/** A Jaeger v2 binary, if one was built (see docs/observability.md). */
const JAEGER = process.env.JAEGER_BIN ?? join(repo, ".troupe/tools/bin/jaeger");

describe.skipIf(!existsSync(JAEGER))(
  `Jaeger v2 (${existsSync(JAEGER) ? JAEGER : "skipped: no Jaeger binary; set JAEGER_BIN or build one into .troupe/tools/bin/jaeger"})`,
  () => {
    let jaeger: ChildProcess | undefined;
    afterAll(() => {
      jaeger?.kill("SIGKILL");
    });

    /** Every span name of the flow: the client's, the planner worker's and the helpers'. */
    const JAEGER_FLOW = [
      "test flow",
      "send planner",
      "process planner",
      "send helper",
      "process helper",
      "send client",
      "process client",
    ];

    it("stores the flow: Jaeger's API returns one trace with spans of both workers", async () => {
      // Jaeger's all-in-one default config: OTLP/HTTP on 4318, query API on 16686
      jaeger = spawn(JAEGER, [], { stdio: "ignore" });
      await waitFor(
        "Jaeger's query API",
        async () => (await fetch("http://127.0.0.1:16686/api/services").catch(() => undefined))?.ok,
        60_000,
      );
      // a client exporting straight to Jaeger
      // every process exports to the receiver here, which passes the spans on to Jaeger
      receiver.forward = "http://127.0.0.1:4318/v1/traces";
      const { traceId } = await tracedPlan();
      await telemetry.flush();
      let lastSeen = "";
      const found = await waitFor(
        "the trace in Jaeger",
        async () => {
          const r = await fetch(`http://127.0.0.1:16686/api/traces/${traceId}`).catch(
            () => undefined,
          );
          if (!r?.ok) return undefined;
          const body = (await r.json()) as {
            data?: { spans: { operationName: string }[] }[];
          };
          // the processes export on their own schedules: wait for the whole flow
          const names = new Set(body.data?.[0]?.spans.map((s) => s.operationName));
          lastSeen = [...names].join(", ");
          return JAEGER_FLOW.every((n) => names.has(n)) ? body.data![0] : undefined;
        },
        30_000,
      ).catch((e: unknown) => {
        throw new Error(`${String(e)}; Jaeger had: ${lastSeen}`);
      });
      const names = found.spans.map((s) => s.operationName);
      expect(names).toEqual(expect.arrayContaining(JAEGER_FLOW));
      expect(new Set(found.spans.map((s) => (s as { traceID?: string }).traceID))).toEqual(
        new Set([traceId]),
      );
    }, 120_000);
  },
);
