/**
 * Many distinct agents on a cluster: a client sends one message to each of N agents that
 * were never seen (`visitor/u0` … `visitor/u<N-1>`), as fast as the workers take them (at most
 * 10,000 waiting in the inbox), hosted by two worker processes (the
 * built apps) with a coordinator on one nats-server. Each agent activates, handles its
 * message, stores its snapshot in KV and passivates after an idle timeout. Every second the
 * bench reads both workers' /metrics: active agents, resident memory, V8 heap in use; every
 * 5 s it also asks a `collector` agent on each worker to run a full gc and say what heap is
 * left (the live set). What it shows: whether the workers' memory follows the agents active
 * within the idle timeout, or the agents ever touched.
 */
import { join } from "node:path";
import { connect, type TroupeClient } from "@troupe/nats";
import { freePorts } from "@troupe/testkit";
import {
  balanced,
  keyOn,
  node,
  root,
  sleep,
  startBenchCluster,
  until,
  WORKER,
} from "./processes.js";

const AGENT_MODULE = join(root, "bench/fixtures/passivating.mjs");
const NAMESPACE = "bench-many";
const SHARDS = 16;
const BACKLOG = 10_000;

export interface WorkerSample {
  active: number;
  /** heap in use right after a full gc (the live set), when this sample forced one */
  liveBytes?: number;
  processed: number;
  rssBytes: number;
  heapUsedBytes: number;
}

export interface ManySample {
  /** seconds since the first send */
  at: number;
  /** messages the client has had stored so far */
  sent: number;
  /** of those, processed by the visitor agents (the collectors' requests not counted) */
  processed: number;
  workers: WorkerSample[];
  natsServerMemBytes: number;
}

export interface ManyAgentsFigures {
  agents: number;
  idleMs: number;
  seconds: number;
  samples: ManySample[];
}

function metric(text: string, name: string): number {
  const m = text.match(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, "m"));
  return m === null ? Number.NaN : Number(m[1]);
}

async function workerSample(port: number): Promise<WorkerSample> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return {
    active: metric(text, "troupe_active_agents"),
    processed: metric(text, "troupe_messages_processed_total"),
    rssBytes: metric(text, "process_resident_memory_bytes"),
    heapUsedBytes: metric(text, "nodejs_heap_size_used_bytes"),
  };
}

export async function manyAgentsBench(
  agents: number,
  idleMs: number,
  log: (line: string) => void = () => {},
): Promise<ManyAgentsFigures> {
  const cluster = await startBenchCluster("bench-many", NAMESPACE, SHARDS);
  const { server, nc, common, children } = cluster;
  let client: TroupeClient | undefined;
  try {
    const ports = await freePorts(2);
    for (const [i, port] of ports.entries()) {
      children.push(
        node(
          WORKER,
          [...common, "--agents", AGENT_MODULE, "--id", `w${i + 1}`, "--http-port", String(port)],
          { BENCH_IDLE_MS: String(idleMs) },
          ["--expose-gc"],
        ),
      );
    }
    const status = await until(
      "two balanced workers",
      () => balanced(nc, NAMESPACE, ["w1", "w2"], SHARDS / 2),
      90_000,
    );
    client = await connect({ servers: server.url, namespace: NAMESPACE });
    const c = client;
    // one collector on each worker
    const collectors = ["w1", "w2"].map((id) =>
      c.ref("collector", keyOn(status, id, "collector", SHARDS)),
    );
    // the collectors' own messages, not to be counted with the visitors'
    let gcRequests = 0;
    const live = () =>
      Promise.all(
        collectors.map((c) => {
          gcRequests++;
          return c.request<{ liveBytes: number }>({ type: "gc" }, { timeoutMs: 30_000 }).then(
            (r) => r.liveBytes,
            () => Number.NaN,
          );
        }),
      );
    const samples: ManySample[] = [];
    let sent = 0;
    const t0 = performance.now();
    let samplesTaken = 0;
    const sample = async (withGc = samplesTaken % 5 === 0) => {
      samplesTaken++;
      const liveBytes = withGc ? await live() : undefined;
      const workers = await Promise.all(ports.map((p) => workerSample(p!)));
      if (liveBytes !== undefined) {
        for (const [i, w] of workers.entries()) w.liveBytes = liveBytes[i];
      }
      const varz = (await (await fetch(`${server.monitorUrl}/varz`)).json()) as { mem: number };
      const done = workers.reduce((n, w) => n + w.processed, 0) - gcRequests;
      const s: ManySample = {
        at: (performance.now() - t0) / 1000,
        sent,
        processed: done,
        workers,
        natsServerMemBytes: varz.mem,
      };
      samples.push(s);
      const mib = (b: number | undefined) => (b === undefined ? "-" : Math.round(b / 2 ** 20));
      log(
        `${s.at.toFixed(0)} s: sent ${sent}, processed ${done}, active ${workers.map((w) => w.active).join("+")}, rss ${workers.map((w) => mib(w.rssBytes)).join("+")} MiB, heap ${workers.map((w) => mib(w.heapUsedBytes)).join("+")} MiB, live ${workers.map((w) => mib(w.liveBytes)).join("+")} MiB`,
      );
      return done;
    };
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        await sample().catch(() => undefined);
        await sleep(1000);
      }
    })();
    const window = 2_000;
    const inflight: Promise<unknown>[] = [];
    const processedNow = async () =>
      (await Promise.all(ports.map((p) => workerSample(p!)))).reduce((n, w) => n + w.processed, 0) -
      gcRequests;
    for (let i = 0; i < agents; i++) {
      inflight.push(client.ref("visitor", `u${i}`).send({ type: "inc" }));
      if (inflight.length >= window) {
        await Promise.all(inflight.splice(0));
        sent = i + 1;
        // paced to what the workers take: at most BACKLOG messages waiting in the inbox, so
        // the collectors' requests are answered within seconds, not after the whole run
        while (sent - (await processedNow()) > BACKLOG) await sleep(100);
      }
    }
    await Promise.all(inflight);
    sent = agents;
    // until every message is processed and the agents touched last have passivated
    await until(
      "every message processed and the workers idle",
      async () => {
        const w = await Promise.all(ports.map((p) => workerSample(p!)));
        const done = w.reduce((n, x) => n + x.processed, 0) - gcRequests;
        // idle: nothing active but (perhaps) the collector
        return done >= agents && w.every((x) => x.active <= 1) ? true : undefined;
      },
      agents * 2 + 60_000,
    );
    sampling = false;
    await sampler;
    await sample(true);
    return { agents, idleMs, seconds: (performance.now() - t0) / 1000, samples };
  } finally {
    await client?.close().catch(() => {});
    await cluster.close();
  }
}
