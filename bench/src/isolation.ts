/**
 * Quarantine isolation: the throughput of healthy agents on NATS alone, next to a quarantined
 * agent that gets its share of the traffic, and next to one flooded with messages (all held
 * in the held stream by the same process). Rounds alternate so warm-up and machine noise
 * fall on every case alike; medians per case.
 */

import { connect } from "@nats-io/transport-node";
import { createNatsBackend, ensureNamespace } from "@troupe/nats";
import { createRuntime, type Runtime } from "@troupe/runtime";
import { startNatsServer } from "@troupe/testkit";
import { counter, PAD } from "./cluster.js";

const HEALTHY = 100;

export interface IsolationFigures {
  alone: number[];
  share: number[];
  flood: number[];
  messages: number;
}

/** Sends `messages` to the healthy agents and `extra` to the quarantined one; healthy msgs/s. */
async function round(runtime: Runtime, messages: number, extra: number): Promise<number> {
  const refs = Array.from({ length: HEALTHY }, (_, i) => runtime.ref(counter, `h${i}`));
  const quarantined = runtime.ref(counter, "quarantined");
  const target = runtime.stats().processed + messages;
  const t0 = performance.now();
  const window = 2_000;
  const inflight: Promise<unknown>[] = [];
  // the quarantined agent's messages are spread evenly through the healthy ones
  const every = extra > 0 ? messages / extra : Number.POSITIVE_INFINITY;
  let sentExtra = 0;
  for (let i = 0; i < messages; i++) {
    inflight.push(refs[i % HEALTHY]!.send({ type: "inc", by: 1, pad: PAD }));
    while (sentExtra < extra && i + 1 >= (sentExtra + 1) * every) {
      inflight.push(quarantined.send({ type: "inc", by: 1, pad: PAD }));
      sentExtra++;
    }
    if (inflight.length >= window) await Promise.all(inflight.splice(0));
  }
  await Promise.all(inflight);
  const deadline = Date.now() + 120_000;
  while (runtime.stats().processed < target && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 2));
  }
  if (runtime.stats().processed < target) throw new Error("healthy messages not processed in time");
  return messages / ((performance.now() - t0) / 1000);
}

export async function isolationBench(messages: number, runs: number): Promise<IsolationFigures> {
  const server = await startNatsServer();
  const nc = await connect({ servers: server.url, name: "bench-isolation", noAsyncTraces: true });
  try {
    const namespace = `bench-iso-${process.pid}`;
    const info = await ensureNamespace(nc, { namespace, shardCount: 4 });
    const backend = await createNatsBackend({ nc, namespaceInfo: info, shards: "all" });
    const runtime = await createRuntime({ agents: [counter], backend });
    await runtime.quarantine("counter/quarantined", "bench: held on purpose");
    const figures: IsolationFigures = { alone: [], share: [], flood: [], messages };
    await round(runtime, messages / 4, 0); // warm-up, not measured
    for (let r = 0; r < runs; r++) {
      figures.alone.push(await round(runtime, messages, 0));
      // as one of 101 agents with equal traffic
      figures.share.push(await round(runtime, messages, Math.round(messages / HEALTHY)));
      // half as many messages again, all for the quarantined agent
      figures.flood.push(await round(runtime, messages, messages / 2));
    }
    await runtime.shutdown();
    return figures;
  } finally {
    await nc.drain().catch(() => {});
    await server.cleanup();
  }
}
