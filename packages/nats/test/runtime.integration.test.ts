/**
 * A full runtime on NATS: one worker runtime hosting the agents (owning every shard), and a
 * client runtime made by `connect()` in the same process, as another process would.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { StandardSchemaV1 } from "@standard-schema/spec";
import { createRuntime, defineAgent, type Runtime, reply } from "@troupe/runtime";
import { cleanup, type NatsServer, setup } from "@troupe/testkit";
import { ErrorCode, encodeFrame, newMessageId } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assign, setup as machineSetup } from "xstate";
import {
  connect,
  createNatsBackend,
  type NatsBackend,
  namespaceNames,
  shardOfAddress,
  subjectToken,
  type TroupeClient,
} from "../src/index.js";
import { freshNamespace, waitFor } from "./helpers.js";

const counterMachine = machineSetup({
  types: {
    context: {} as { count: number; seen: number[] },
    events: {} as { type: "inc"; by: number; n?: number } | { type: "get" } | { type: "log" },
  },
}).createMachine({
  context: { count: 0, seen: [] },
  on: {
    inc: {
      actions: assign({
        count: ({ context, event }) => context.count + event.by,
        seen: ({ context, event }) =>
          event.n === undefined ? context.seen : [...context.seen, event.n],
      }),
    },
    get: { actions: reply(({ context }) => ({ type: "value", value: context.count })) },
    log: { actions: reply(({ context }) => ({ type: "log", seen: context.seen })) },
  },
});

const counter = defineAgent({ type: "counter", machine: counterMachine });

/** A minimal Standard Schema: `by` must be a positive integer. */
const positiveBy: StandardSchemaV1 = {
  "~standard": {
    version: 1,
    vendor: "test",
    validate: (v) => {
      const by = (v as { by?: unknown }).by;
      return typeof by === "number" && Number.isInteger(by) && by > 0
        ? { value: v }
        : { issues: [{ message: "by must be a positive integer" }] };
    },
  },
};
const strict = defineAgent({
  type: "strict",
  machine: counterMachine,
  events: { inc: positiveBy },
});

const SHARDS = 8;
let ns: NatsServer;
let nc: NatsConnection;
let namespace: string;
let backend: NatsBackend;
let worker: Runtime;
let client: TroupeClient;
const warnings: string[] = [];

beforeAll(async () => {
  ({ ns, nc } = await setup());
  namespace = freshNamespace("rt");
  backend = await createNatsBackend({ nc, namespace, shardCount: SHARDS, shards: "all" });
  worker = await createRuntime({
    agents: [counter, strict],
    backend,
    limits: { maxFrameBytes: backend.maxFrameBytes },
    logger: {
      debug() {},
      info() {},
      warn: (_o, msg) => warnings.push(msg ?? ""),
      error: (_o, msg) => warnings.push(`error: ${msg ?? ""}`),
    },
  });
  client = await connect({ servers: ns.url, namespace, requestTimeoutMs: 10_000 });
});

afterAll(async () => {
  await client?.close();
  await worker?.shutdown();
  await cleanup(ns, nc);
});

describe("a runtime on NATS", () => {
  it("runs 20 agents × 50 messages, each agent's in order", async () => {
    const t0 = performance.now();
    let sendMs = 0;
    await Promise.all(
      Array.from({ length: 20 }, async (_, a) => {
        const ref = worker.ref(counter, `load-${a}`);
        for (let n = 0; n < 50; n++) {
          const s = performance.now();
          await ref.send({ type: "inc", by: 1, n });
          sendMs += performance.now() - s;
        }
      }),
    );
    const sent = performance.now();
    for (let a = 0; a < 20; a++) {
      const ref = worker.ref(counter, `load-${a}`);
      await waitFor(
        `load-${a} to count 50`,
        async () => (await ref.request<{ value: number }>({ type: "get" })).value === 50,
      );
      const log = await ref.request<{ seen: number[] }>({ type: "log" });
      expect(log.seen).toEqual(Array.from({ length: 50 }, (_, i) => i));
    }
    const done = performance.now();
    console.log(
      `1000 sends (20 agents in parallel, each sequential): ${(sent - t0).toFixed(0)} ms, ` +
        `${(1000 / ((sent - t0) / 1000)).toFixed(0)} msg/s; mean send→receipt ${(sendMs / 1000).toFixed(2)} ms; ` +
        `all processed and checked after ${(done - t0).toFixed(0)} ms`,
    );
    expect(worker.stats().processed).toBeGreaterThanOrEqual(1000);
  });

  it("settles: settled() waits for messages still on their way through NATS", async () => {
    const before = worker.stats().processed;
    const ref = worker.ref(counter, "settle");
    await Promise.all(Array.from({ length: 30 }, () => ref.send({ type: "inc", by: 1 })));
    await worker.settled();
    expect(worker.stats().processed - before).toBe(30);
    expect(backend.pendingDeliveries?.()).toBe(0);
  });

  it("answers requests, and times out when no reply comes", async () => {
    const ref = worker.ref(counter, "rr");
    await ref.send({ type: "inc", by: 5 });
    expect(await ref.request({ type: "get" })).toEqual({ type: "value", value: 5 });
    const t = Date.now();
    await expect(ref.request({ type: "inc", by: 1 }, { timeoutMs: 300 })).rejects.toMatchObject({
      code: ErrorCode.TIMEOUT,
    });
    expect(Date.now() - t).toBeLessThan(2000);
  });

  it("refuses invalid events: at the sender when it knows the type, else at the worker", async () => {
    await expect(worker.ref(strict, "v").send({ type: "inc", by: -1 })).rejects.toMatchObject({
      code: ErrorCode.VALIDATION_ERROR,
    });
    // the client does not host "strict": the worker validates, parks, and answers the error
    await expect(client.ref("strict", "v").request({ type: "inc", by: 0.5 })).rejects.toMatchObject(
      { code: ErrorCode.VALIDATION_ERROR },
    );
    const parked = await worker.parked(20);
    expect(parked.some((p) => p.to === "strict/v" && p.code === ErrorCode.VALIDATION_ERROR)).toBe(
      true,
    );
    await client.ref("strict", "v").send({ type: "inc", by: 2 });
    expect(await client.ref("strict", "v").request({ type: "get" })).toEqual({
      type: "value",
      value: 2,
    });
  });

  it("parks garbage published straight onto inbox subjects and keeps running", async () => {
    const names = namespaceNames(namespace);
    const before = await backend.parked.count();
    const shard = shardOfAddress("counter/g", SHARDS);
    const jsm = await jetstreamManager(nc);
    const js = jsm.jetstream();
    // not a frame at all, on a valid agent subject
    await js.publish(
      names.inboxSubject(shard, subjectToken("counter/g")),
      new Uint8Array([1, 2, 3]),
    );
    // a token that is no address
    await js.publish(names.inboxSubject(0, "@@not-base64"), new Uint8Array([4, 5]));
    // a valid frame on the wrong shard's subject
    const misrouted = encodeFrame({
      envelope: {
        version: 1,
        kind: "event",
        messageId: newMessageId(),
        from: "~raw",
        to: "counter/g",
        sequence: 1,
        timestampNs: 1n,
      },
      message: { kind: "data", payload: { type: "inc", by: 1 } },
    });
    await js.publish(
      names.inboxSubject((shard + 1) % SHARDS, subjectToken("counter/g")),
      misrouted,
    );
    await waitFor("3 parked", async () => (await backend.parked.count()) >= before + 3);
    const parked = await worker.parked(3);
    expect(parked.map((p) => p.code).sort()).toEqual(
      [ErrorCode.DECODE_ERROR, ErrorCode.INVALID_ARGUMENT, ErrorCode.INVALID_ARGUMENT].sort(),
    );
    expect(backend.stats().misrouted).toBeGreaterThanOrEqual(2);
    // the worker is fine: counter/g took nothing from the garbage
    await worker.ref(counter, "g").send({ type: "inc", by: 1 });
    expect(await client.ref("counter", "g").request({ type: "get" })).toEqual({
      type: "value",
      value: 1,
    });
  });

  it("serves a client runtime made by connect() (another process's view)", async () => {
    const ref = client.ref("counter", "from-client");
    const t0 = performance.now();
    for (let i = 0; i < 100; i++) await ref.send({ type: "inc", by: 1, n: i });
    const sendMs = performance.now() - t0;
    const r0 = performance.now();
    const value = await ref.request<{ value: number }>({ type: "get" });
    const rtt = performance.now() - r0;
    expect(value).toEqual({ type: "value", value: 100 });
    // requests to an agent type nobody hosts fail at the worker with UNKNOWN_AGENT
    await expect(client.ref("nobody", "x").request({ type: "hi" })).rejects.toMatchObject({
      code: ErrorCode.UNKNOWN_AGENT,
    });
    console.log(
      `client: 100 sequential sends ${(sendMs / 100).toFixed(2)} ms each; request→reply ${rtt.toFixed(1)} ms`,
    );
    expect(client.backend.ownedShards()).toEqual([]);
  });
});
