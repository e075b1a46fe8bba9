/**
 * Durable throughput on a real nats-server: agent messages/s end to end (send → seal →
 * JetStream inbox → shard consumer → open → pipeline → handler → snapshot in KV → ack), also
 * with frames not sealed, next to raw nats.js publish → consume → ack on the same server, in
 * the same run, 256 B payloads.
 */

import { connect } from "@nats-io/transport-node";
import { createNatsBackend, ensureNamespace } from "@troupe/nats";
import { createRuntime, defineAgent } from "@troupe/runtime";
import { startNatsServer } from "@troupe/testkit";
import { generateChannelKey } from "@troupe/wire";
import { assign, setup } from "xstate";
import { rawJetStream } from "./raw-jetstream.js";

const machine = setup({
  types: {
    context: {} as { count: number },
    events: {} as { type: "inc"; by: number; pad: string },
  },
}).createMachine({
  context: { count: 0 },
  on: { inc: { actions: assign({ count: ({ context, event }) => context.count + event.by }) } },
});

/** The counter agent of the NATS throughput scenarios (this one, isolation, tracing). */
export const counter = defineAgent({ type: "counter", machine });

// an event whose msgpack payload is about 256 bytes
export const PAD = "x".repeat(236);

/** nats.js option: no Error (with its stack) made per request for async traces. */
export const NO_ASYNC_TRACES = process.env.BENCH_ASYNC_TRACES !== "1";

export interface ClusterFigures {
  /** raw nats.js, `js.publish` (a request per message) */
  rawPerSec: number[];
  /** raw nats.js, core publish with a reply inbox (Troupe's technique) */
  rawCorePerSec: number[];
  /** frames sealed with a channel key */
  troupePerSec: number[];
  /** frames not sealed */
  troupePlainPerSec: number[];
}

export async function troupeOnNats(
  url: string,
  messages: number,
  agents: number,
  run: number,
  sealed = false,
): Promise<number> {
  const nc = await connect({ servers: url, name: "bench", noAsyncTraces: NO_ASYNC_TRACES });
  const namespace = `bench-${process.pid}-${run}`;
  const info = await ensureNamespace(nc, { namespace, shardCount: 16 });
  const backend = await createNatsBackend({ nc, namespace, namespaceInfo: info, shards: "all" });
  const runtime = await createRuntime({
    agents: [counter],
    backend,
    // every frame sealed on send (XChaCha20-Poly1305) and opened on delivery
    ...(sealed ? { sealing: { keys: { bench: generateChannelKey() } } } : {}),
  });
  const refs = Array.from({ length: agents }, (_, i) => runtime.ref(counter, `a${i}`));
  const t0 = performance.now();
  const window = 2_000;
  const inflight: Promise<unknown>[] = [];
  for (let i = 0; i < messages; i++) {
    inflight.push(refs[i % agents]!.send({ type: "inc", by: 1, pad: PAD }));
    if (inflight.length >= window) await Promise.all(inflight.splice(0));
  }
  await Promise.all(inflight);
  const deadline = Date.now() + 120_000;
  while (runtime.stats().processed < messages && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const secs = (performance.now() - t0) / 1000;
  const processed = runtime.stats().processed;
  await runtime.shutdown();
  await nc.drain();
  if (processed < messages) throw new Error(`only ${processed} of ${messages} processed in time`);
  return messages / secs;
}

export async function clusterBench(messages: number, runs: number): Promise<ClusterFigures> {
  const server = await startNatsServer();
  try {
    const nc = await connect({
      servers: server.url,
      name: "bench-raw",
      noAsyncTraces: NO_ASYNC_TRACES,
    });
    const rawPerSec: number[] = [];
    const rawCorePerSec: number[] = [];
    const troupePerSec: number[] = [];
    const troupePlainPerSec: number[] = [];
    // warm-up round, not measured
    await rawJetStream(nc, messages / 4);
    await rawJetStream(nc, messages / 4, "core");
    await troupeOnNats(server.url, messages / 4, 100, -1, true);
    await troupeOnNats(server.url, messages / 4, 100, -2);
    for (let r = 0; r < runs; r++) {
      rawPerSec.push(await rawJetStream(nc, messages));
      rawCorePerSec.push(await rawJetStream(nc, messages, "core"));
      troupePerSec.push(await troupeOnNats(server.url, messages, 100, r, true));
      troupePlainPerSec.push(await troupeOnNats(server.url, messages, 100, 1000 + r));
    }
    await nc.drain();
    return { rawPerSec, rawCorePerSec, troupePerSec, troupePlainPerSec };
  } finally {
    await server.cleanup();
  }
}
