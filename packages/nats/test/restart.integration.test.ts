/**
 * Chaos: the (single, file-storage) nats-server restarts — gracefully, then SIGKILLed —
 * while senders keep going. Checked at the end: every send that resolved is stored exactly
 * once and applied exactly once, in order.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createRuntime, defineAgent, type Runtime, reply } from "@troupe/runtime";
import { type NatsServerHandle, startNatsServer } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assign, setup as machineSetup } from "xstate";
import {
  connect,
  connectNats,
  createNatsBackend,
  type NatsBackend,
  namespaceNames,
  type TroupeClient,
} from "../src/index.js";
import { freshNamespace, sleep, waitFor } from "./helpers.js";

const tally = defineAgent({
  type: "tally",
  machine: machineSetup({
    types: {
      context: {} as { seen: number[] },
      events: {} as { type: "add"; n: number } | { type: "get" },
    },
  }).createMachine({
    context: { seen: [] },
    on: {
      add: { actions: assign({ seen: ({ context, event }) => [...context.seen, event.n] }) },
      get: { actions: reply(({ context }) => ({ type: "seen", seen: context.seen })) },
    },
  }),
});

const AGENTS = 5;
let server: NatsServerHandle;
let workerNc: NatsConnection;
let backend: NatsBackend;
let worker: Runtime;
let client: TroupeClient;
let namespace: string;

beforeAll(async () => {
  server = await startNatsServer();
  namespace = freshNamespace("chaos");
  workerNc = await connectNats(server.url, { nats: { reconnectTimeWait: 50 } });
  backend = await createNatsBackend({ nc: workerNc, namespace, shardCount: 4, shards: "all" });
  worker = await createRuntime({ agents: [tally], backend, retryDelayMs: 50 });
  client = await connect({
    servers: server.url,
    namespace,
    nats: { reconnectTimeWait: 50 },
    requestTimeoutMs: 5000,
  });
}, 30_000);

afterAll(async () => {
  await client?.close();
  await worker?.shutdown();
  await workerNc?.close();
  await server?.cleanup();
});

describe("NATS restarting under load", () => {
  it("stores and applies every acknowledged send exactly once", async () => {
    const sent: number[] = Array(AGENTS).fill(0);
    const latencies: number[] = [];
    let retriedSends = 0;
    let sending = true;
    const senders = Array.from({ length: AGENTS }, async (_, a) => {
      const ref = client.ref("tally", `t${a}`);
      while (sending) {
        const n = sent[a]!;
        const t = performance.now();
        for (;;) {
          try {
            // the same id on a retry: stored once whatever happened to the first try
            await ref.send({ type: "add", n }, { messageId: `t${a}-${n}` });
            break;
          } catch {
            retriedSends++;
            await sleep(100);
          }
        }
        latencies.push(performance.now() - t);
        sent[a] = n + 1;
      }
    });
    await sleep(300);
    const t1 = performance.now();
    await server.restart();
    const gracefulMs = performance.now() - t1;
    await sleep(400);
    const t2 = performance.now();
    await server.kill("SIGKILL");
    await server.restart();
    const killMs = performance.now() - t2;
    await sleep(400);
    sending = false;
    await Promise.all(senders);
    const total = sent.reduce((x, y) => x + y, 0);

    const jsm = await jetstreamManager(client.nc);
    const stored = (await jsm.streams.info(namespaceNames(namespace).inboxStream)).state.messages;
    expect(stored).toBe(total);

    for (let a = 0; a < AGENTS; a++) {
      const ref = client.ref("tally", `t${a}`);
      const seen = await waitFor(
        `t${a} to have all ${sent[a]}`,
        async () => {
          const r = await ref.request<{ seen: number[] }>({ type: "get" }).catch(() => undefined);
          return r !== undefined && r.seen.length >= sent[a]! ? r.seen : undefined;
        },
        45_000,
        200,
      );
      expect(seen).toEqual(Array.from({ length: sent[a]! }, (_, i) => i));
    }
    latencies.sort((x, y) => x - y);
    const stats = backend.stats();
    console.log(
      `restart under load: ${total} sends; graceful restart ${gracefulMs.toFixed(0)} ms, ` +
        `SIGKILL+restart ${killMs.toFixed(0)} ms; send latency p50 ${latencies[latencies.length >> 1]!.toFixed(1)} ms, ` +
        `max ${latencies.at(-1)!.toFixed(0)} ms; sends retried by the caller ${retriedSends}; ` +
        `client append retries ${client.backend.stats().appendRetries}, duplicates ${client.backend.stats().duplicates}; ` +
        `worker: gaps ${stats.gaps}, resyncs ${stats.resyncs}, duplicate deliveries ${stats.duplicateDeliveries}, ` +
        `redeliveries skipped ${worker.stats().skipped}, host restarts ${worker.stats().activations - AGENTS}`,
    );
  }, 90_000);
});
