/**
 * Recovery after a worker is SIGKILLed: real coordinator and worker processes (the built
 * apps) on one nats-server, steady load on 100 agents; a worker is killed and, for every
 * agent of its shards, the time from the kill to its first processed message after it (a
 * request sent at the kill, answered once the new owner got there) is measured.
 */
import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { connect as natsConnect } from "@nats-io/transport-node";
import { connect, shardOfAddress, type TroupeClient } from "@troupe/nats";
import { startNatsServer } from "@troupe/testkit";
import {
  balanced as balancedOver,
  COORDINATOR,
  node,
  root,
  sleep,
  until,
  WORKER,
} from "./processes.js";

const AGENT_MODULE = join(root, "bench/fixtures/counter.mjs");
const NAMESPACE = "bench-recovery";
const SHARDS = 16;
const AGENTS = 100;
const RATE = 200;
const LEASE_MS = 2000;

export interface RecoveryFigures {
  kills: number;
  agents: number;
  leaseMs: number;
  /** kill → first processed message, per affected agent, ms */
  samples: number[];
}

export async function recoveryBench(kills: number): Promise<RecoveryFigures> {
  if (![WORKER, COORDINATOR].every(existsSync)) {
    throw new Error("the apps are not built (npm run bench builds them)");
  }
  const server = await startNatsServer();
  const children: ChildProcess[] = [];
  let client: TroupeClient | undefined;
  const nc = await natsConnect({ servers: server.url });
  try {
    const common = ["--nats", server.url, "--namespace", NAMESPACE];
    children.push(
      node(COORDINATOR, [...common, "--shards", String(SHARDS), "--lease-ms", String(LEASE_MS)]),
    );
    const workers = new Map<string, ChildProcess>();
    const startWorker = (id: string) => {
      const w = node(WORKER, [...common, "--agents", AGENT_MODULE, "--id", id]);
      children.push(w);
      workers.set(id, w);
    };
    for (const id of ["w1", "w2", "w3"]) startWorker(id);
    const balanced = () => balancedOver(nc, NAMESPACE, ["w1", "w2", "w3"], 5);
    await until("three balanced workers", balanced, 90_000);
    client = await connect({ servers: server.url, namespace: NAMESPACE });
    const c = client;
    let running = true;
    const sender = (async () => {
      let a = 0;
      while (running) {
        await sleep(50);
        for (let i = 0; i < RATE / 20; i++) {
          c.ref("counter", `a${a++ % AGENTS}`)
            .send({ type: "inc" })
            .catch(() => {});
        }
      }
    })();
    const samples: number[] = [];
    await sleep(3000);
    for (let k = 0; k < kills; k++) {
      const s = await until("balanced workers", balanced, 60_000);
      const id = ["w1", "w2", "w3"][k % 3]!;
      const shards = new Set(s.workers.find((w) => w.id === id)!.shards);
      const affected = Array.from({ length: AGENTS }, (_, a) => a).filter((a) =>
        shards.has(shardOfAddress(`counter/a${a}`, SHARDS)),
      );
      const victim = workers.get(id)!;
      const at = Date.now();
      victim.kill("SIGKILL");
      await Promise.all(
        affected.map(async (a) => {
          for (;;) {
            try {
              await c.ref("counter", `a${a}`).request({ type: "get" }, { timeoutMs: 30_000 });
              samples.push(Date.now() - at);
              return;
            } catch {
              if (Date.now() - at > 60_000) throw new Error(`counter/a${a} did not recover`);
            }
          }
        }),
      );
      startWorker(id);
      await until("the restarted worker to own shards", balanced, 60_000);
      await sleep(2000);
    }
    running = false;
    await sender;
    return { kills, agents: AGENTS, leaseMs: LEASE_MS, samples };
  } finally {
    for (const ch of children)
      if (ch.exitCode === null && ch.signalCode === null) ch.kill("SIGKILL");
    await client?.close().catch(() => {});
    await nc.close().catch(() => {});
    await server.cleanup();
  }
}
