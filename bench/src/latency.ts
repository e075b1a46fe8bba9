/**
 * Agent → agent request/reply latency across two worker processes: real coordinator and
 * workers (the built apps) on one nats-server; a client asks `relay/<k>` (owned by worker 1)
 * with `ping`, the relay asks `echo/<k'>` (owned by worker 2) and answers the client once the
 * echo's reply is back (bench/fixtures/relay.mjs). Requests go out at a fixed rate whatever
 * the replies do (open loop: a slow reply does not delay the next request), and the client
 * records each round trip. The baseline is a plain nats.js request → responder → reply on
 * the same server at the same rate.
 */
import { join } from "node:path";
import { connect as natsConnect } from "@nats-io/transport-node";
import { connect, type TroupeClient } from "@troupe/nats";
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

const AGENT_MODULE = join(root, "bench/fixtures/relay.mjs");
const NAMESPACE = "bench-latency";
const SHARDS = 16;

export interface OpenLoopResult {
  /** Round trips of the requests answered, ms, in send order. */
  samples: number[];
  sent: number;
  errors: number;
  /** How late the sender was against its schedule, ms: p99 and max over all sends. */
  lagP99Ms: number;
  lagMaxMs: number;
  /** Sends per second actually achieved over the run. */
  ratePerSec: number;
}

export interface LatencyFigures {
  rate: number;
  seconds: number;
  relay: string;
  echo: string;
  raw: OpenLoopResult;
  troupe: OpenLoopResult;
  /** The measured troupe round trips split into hops (ms, from the agents' own stamps). */
  hops: Hops;
}

export interface Hops {
  /** client request → relay handles the ping (append, delivery to worker 1) */
  clientToRelay: number[];
  /** relay handles ping → echo handles echo (relay's snapshot + publish, delivery to worker 2) */
  relayToEcho: number[];
  /** echo handles echo → relay handles its reply (echo's snapshot + publish, delivery back) */
  echoToRelay: number[];
  /** the agent → agent request/reply: relay sends to echo until the reply is handled */
  agentRoundTrip: number[];
  /** relay handles the reply → the client has the pong (relay's snapshot, direct reply) */
  relayToClient: number[];
}

const now = () => performance.timeOrigin + performance.now();

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.ceil((p / 100) * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, i))]!;
}

/**
 * Calls `fire(i)` at `rate` per second for `seconds`, on schedule: each tick sends every
 * request that is due by now, without waiting for earlier ones to be answered.
 */
export async function openLoop(
  rate: number,
  seconds: number,
  fire: (i: number) => Promise<unknown>,
): Promise<OpenLoopResult> {
  const total = Math.round(rate * seconds);
  const interval = 1000 / rate;
  const samples: number[] = [];
  const lags: number[] = [];
  const pending: Promise<void>[] = [];
  let errors = 0;
  const t0 = performance.now();
  let i = 0;
  while (i < total) {
    const now = performance.now();
    const due = Math.min(total, Math.floor((now - t0) / interval) + 1);
    for (; i < due; i++) {
      const start = performance.now();
      lags.push(start - (t0 + i * interval));
      pending.push(
        fire(i).then(
          () => {
            samples.push(performance.now() - start);
          },
          () => {
            errors++;
          },
        ),
      );
    }
    await sleep(Math.max(0, t0 + i * interval - performance.now()));
  }
  const elapsed = performance.now() - t0;
  await Promise.all(pending);
  lags.sort((a, b) => a - b);
  return {
    samples,
    sent: total,
    errors,
    lagP99Ms: percentile(lags, 99),
    lagMaxMs: lags[lags.length - 1] ?? 0,
    ratePerSec: total / (elapsed / 1000),
  };
}

export async function latencyBench(rate: number, seconds: number): Promise<LatencyFigures> {
  const cluster = await startBenchCluster("bench-latency", NAMESPACE, SHARDS);
  const { server, nc, common, children } = cluster;
  let client: TroupeClient | undefined;
  try {
    for (const id of ["w1", "w2"]) {
      children.push(node(WORKER, [...common, "--agents", AGENT_MODULE, "--id", id]));
    }
    const s = await until(
      "two balanced workers",
      () => balanced(nc, NAMESPACE, ["w1", "w2"], SHARDS / 2),
      90_000,
    );
    const relayKey = keyOn(s, "w1", "relay", SHARDS);
    const echoKey = keyOn(s, "w2", "echo", SHARDS);

    client = await connect({ servers: server.url, namespace: NAMESPACE });
    const relay = client.ref("relay", relayKey);
    let seq = 0;
    let hops: Hops | undefined;
    const ping = async () => {
      const id = `${seq++}`;
      const t0 = now();
      const r = await relay.request<{ id: string; t1: number; t2: number; t3: number }>(
        { type: "ping", id, partner: echoKey },
        { timeoutMs: 10_000 },
      );
      const t4 = now();
      if (r.id !== id) throw new Error(`reply for ${r.id}, expected ${id}`);
      if (hops !== undefined) {
        hops.clientToRelay.push(r.t1 - t0);
        hops.relayToEcho.push(r.t2 - r.t1);
        hops.echoToRelay.push(r.t3 - r.t2);
        hops.agentRoundTrip.push(r.t3 - r.t1);
        hops.relayToClient.push(t4 - r.t3);
      }
    };
    // the baseline: a plain responder and requester on the same server
    const responder = await natsConnect({ servers: server.url, name: "bench-rtt-responder" });
    responder.subscribe("bench.rtt", {
      callback: (_e, m) => {
        m.respond(m.data);
      },
    });
    await responder.flush();
    const payload = new Uint8Array(64);
    const rtt = () => nc.request("bench.rtt", payload, { timeout: 10_000 });
    await openLoop(rate, 1, rtt);
    const raw = await openLoop(rate, seconds, rtt);
    await responder.drain();

    // activation and JIT warm-up right before the measured run, not measured
    await ping();
    await openLoop(rate, 2, ping);
    hops = {
      clientToRelay: [],
      relayToEcho: [],
      echoToRelay: [],
      agentRoundTrip: [],
      relayToClient: [],
    };
    const troupe = await openLoop(rate, seconds, ping);
    return {
      rate,
      seconds,
      relay: `relay/${relayKey} on w1`,
      echo: `echo/${echoKey} on w2`,
      raw,
      troupe,
      hops,
    };
  } finally {
    await client?.close().catch(() => {});
    await cluster.close();
  }
}
