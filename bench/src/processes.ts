/**
 * The cluster scenarios' processes: the built coordinator and worker apps as children, the
 * coordinator's status, and agent keys placed on a chosen worker.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type NatsConnection, connect as natsConnect } from "@nats-io/transport-node";
import { shardOfAddress } from "@troupe/nats";
import { type NatsServerHandle, startNatsServer } from "@troupe/testkit";

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

/** A local nats-server, a control connection and the built coordinator, for one scenario. */
export interface BenchCluster {
  server: NatsServerHandle;
  /** A plain connection for control requests (status) and raw baselines. */
  nc: NatsConnection;
  /** `--nats <url> --namespace <ns>`, what every app of the scenario is given. */
  common: string[];
  /** The apps started so far (the coordinator first); workers are pushed by the scenario. */
  children: ChildProcess[];
  /** SIGTERM every app, SIGKILL what is left half a second later, then the server goes. */
  close(): Promise<void>;
}

export async function startBenchCluster(
  name: string,
  namespace: string,
  shards: number,
): Promise<BenchCluster> {
  if (![WORKER, COORDINATOR].every(existsSync)) {
    throw new Error("the apps are not built (npm run bench builds them)");
  }
  const server = await startNatsServer();
  const children: ChildProcess[] = [];
  const alive = () => children.filter((ch) => ch.exitCode === null && ch.signalCode === null);
  let nc: NatsConnection | undefined;
  const close = async () => {
    for (const ch of alive()) ch.kill("SIGTERM");
    await sleep(500);
    for (const ch of alive()) ch.kill("SIGKILL");
    await nc?.close().catch(() => {});
    await server.cleanup();
  };
  try {
    nc = await natsConnect({ servers: server.url, name: `${name}-ctl` });
    const common = ["--nats", server.url, "--namespace", namespace];
    children.push(node(COORDINATOR, [...common, "--shards", String(shards)]));
    return { server, nc, common, children, close };
  } catch (e) {
    await close();
    throw e;
  }
}
