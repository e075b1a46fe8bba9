/**
 * The cluster scenarios' processes: the built coordinator and worker apps as children, the
 * coordinator's status, and agent keys placed on a chosen worker.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { NatsConnection } from "@nats-io/transport-node";
import { shardOfAddress } from "@troupe/nats";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const WORKER = join(root, "apps/worker/dist/main.js");
export const COORDINATOR = join(root, "apps/coordinator/dist/main.js");

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A built app as a child process. */
export function node(
  script: string,
  args: string[],
  env: Record<string, string> = {},
  execArgv: string[] = [],
): ChildProcess {
  return spawn(process.execPath, [...execArgv, script, ...args], {
    cwd: root,
    // BENCH_CHILD_LOGS=1: the children's logs (warnings and errors) on this process's stderr
    stdio: process.env.BENCH_CHILD_LOGS === "1" ? ["ignore", 2, 2] : "ignore",
    // several workers on one machine: each takes a free port for its probes
    env: { ...process.env, TROUPE_LOG_LEVEL: "warn", TROUPE_HTTP_PORT: "0", ...env },
  });
}

export async function until<T>(what: string, check: () => Promise<T | undefined>, ms: number) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

export interface Status {
  workers: Array<{ id: string; shards: number[] }>;
  unassigned: number[];
}

/** The leader's `ctl.status`, or undefined while there is none to answer. */
export async function clusterStatus(
  nc: NatsConnection,
  namespace: string,
): Promise<Status | undefined> {
  try {
    const m = await nc.request(`troupe.${namespace}.ctl.status`, "", { timeout: 1000 });
    const s = m.json<Status | { error: unknown }>();
    return "error" in s ? undefined : s;
  } catch {
    return undefined;
  }
}

/** The status once every shard is owned and each of `ids` owns at least `each` of them. */
export async function balanced(
  nc: NatsConnection,
  namespace: string,
  ids: readonly string[],
  each: number,
): Promise<Status | undefined> {
  const s = await clusterStatus(nc, namespace);
  if (s === undefined || s.unassigned.length > 0) return undefined;
  const ok = ids.every((id) => (s.workers.find((w) => w.id === id)?.shards.length ?? 0) >= each);
  return ok ? s : undefined;
}

/** The first key `k<n>` of `type` whose shard `worker` owns in `status`. */
export function keyOn(status: Status, worker: string, type: string, shardCount: number): string {
  const shards = new Set(status.workers.find((w) => w.id === worker)?.shards ?? []);
  if (shards.size === 0) throw new Error(`${worker} owns no shard`);
  for (let k = 0; ; k++) {
    if (shards.has(shardOfAddress(`${type}/k${k}`, shardCount))) return `k${k}`;
  }
}
