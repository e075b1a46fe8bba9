/**
 * Test helpers for process-level cluster tests: builds the apps, starts NATS, spawns the built
 * worker and coordinator as real Node processes, collects their logs, stops them with real
 * signals.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { type NatsConnection, connect as natsConnect } from "@nats-io/transport-node";
import type { ClusterStatus } from "@troupe/coordinator";
import {
  type NatsClusterHandle,
  type NatsServerHandle,
  startNatsCluster,
  startNatsServer,
} from "@troupe/testkit";

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const WORKER_MAIN = join(repo, "apps/worker/dist/main.js");
export const COORDINATOR_MAIN = join(repo, "apps/coordinator/dist/main.js");
export const CLI_MAIN = join(repo, "apps/cli/dist/main.js");

/** Builds the apps and the example agents (turbo: a cache hit when nothing changed); stale dists would mislead. */
export async function buildApps(): Promise<void> {
  const t0 = performance.now();
  try {
    await promisify(execFile)(
      "npx",
      [
        "turbo",
        "run",
        "build",
        "--filter=@troupe/worker",
        "--filter=@troupe/coordinator-service",
        "--filter=@troupe/cli",
        "--filter=@troupe/example-demo",
        "--filter=@troupe/example-ping-pong",
        "--output-logs=errors-only",
      ],
      { cwd: repo, timeout: 240_000, maxBuffer: 16 * 1024 * 1024 },
    );
  } catch (e) {
    const out = (e as { stdout?: string; stderr?: string }).stdout ?? "";
    // in CI a stale dist would test old code: only a developer's machine falls back to it
    if (process.env.CI || ![WORKER_MAIN, COORDINATOR_MAIN].every(existsSync)) {
      throw new Error(`build failed:\n${out.slice(-4000)}`);
    }
    console.warn(`build failed; testing the existing dist:\n${out.slice(-2000)}`);
  }
  console.log(`build: ${(performance.now() - t0).toFixed(0)} ms`);
}

export interface Proc {
  name: string;
  child: ChildProcess;
  /** Exit code (or the signal's name) once the process has exited. */
  exited: Promise<number | string>;
  logs: string[];
}

/** Every process spawned here, for `stopAll`. */
export const procs: Proc[] = [];

/** `options.cwd` / `options.env` (added to this process's env) run it as a container would. */
export function spawnNode(
  name: string,
  script: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Proc {
  const child = spawn(process.execPath, [script, ...args], {
    cwd: options.cwd ?? repo,
    stdio: ["ignore", "pipe", "pipe"],
    // several processes on one machine: probes on any free port unless the test says otherwise
    env: { ...process.env, TROUPE_LOG_LEVEL: "info", TROUPE_HTTP_PORT: "0", ...options.env },
  });
  const logs: string[] = [];
  let partial = "";
  const take = (chunk: Buffer) => {
    const lines = (partial + chunk.toString("utf8")).split("\n");
    partial = lines.pop() ?? "";
    for (const l of lines) {
      logs.push(l);
      if (logs.length > 2000) logs.shift();
    }
  };
  child.stdout?.on("data", take);
  child.stderr?.on("data", take);
  const exited = new Promise<number | string>((r) =>
    child.on("exit", (code, signal) => r(code ?? signal ?? "unknown")),
  );
  const proc = { name, child, exited, logs };
  procs.push(proc);
  return proc;
}

export function logTail(p: Proc, n = 40): string {
  return `--- ${p.name} (pid ${p.child.pid}) ---\n${p.logs.slice(-n).join("\n")}`;
}

export async function stopProc(
  p: Proc,
  signal: NodeJS.Signals = "SIGTERM",
): Promise<number | string> {
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill(signal);
  const timer = setTimeout(() => p.child.kill("SIGKILL"), 30_000);
  try {
    return await p.exited;
  } finally {
    clearTimeout(timer);
  }
}

export async function waitFor<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Stops every process spawned here (SIGKILL: for afterAll, after a failure). */
export async function stopAll(): Promise<void> {
  await Promise.all(procs.map((p) => stopProc(p, "SIGKILL")));
}

/** With TROUPE_TEST_LOGS=1, every process's last 400 log lines (in afterAll, failed or not). */
export function printLogsIfAsked(): void {
  if (process.env.TROUPE_TEST_LOGS === "1") for (const p of procs) console.log(logTail(p, 400));
}

/** A nats-server and this process's connection to it. */
export async function connectedServer(): Promise<{ server: NatsServerHandle; nc: NatsConnection }> {
  const server = await startNatsServer();
  try {
    return { server, nc: await natsConnect({ servers: server.url }) };
  } catch (e) {
    await server.cleanup();
    throw e;
  }
}

/** A JetStream cluster of `nodes` and this process's connection to all of them. */
export async function connectedCluster(
  nodes: number,
): Promise<{ cluster: NatsClusterHandle; nc: NatsConnection }> {
  const cluster = await startNatsCluster({ nodes });
  try {
    return { cluster, nc: await natsConnect({ servers: cluster.urls }) };
  } catch (e) {
    await cluster.cleanup();
    throw e;
  }
}

/** The end of a process test: every process SIGKILLed, then the connection closed and NATS gone. */
export async function teardown(
  nats: NatsServerHandle | NatsClusterHandle | undefined,
  nc?: NatsConnection,
): Promise<void> {
  await stopAll();
  await nc?.close().catch(() => {});
  await nats?.cleanup();
}

/** Where the processes of a test run: NATS (one URL, or a cluster's) and the namespace. */
export interface Target {
  servers: string | readonly string[];
  namespace: string;
}

/** `--nats <urls> --namespace <namespace>`, as both apps take them. */
export function natsArgs(at: Target): string[] {
  const urls = typeof at.servers === "string" ? at.servers : at.servers.join(",");
  return ["--nats", urls, "--namespace", at.namespace];
}

export interface CoordinatorOptions {
  shards: number;
  replicas?: number;
  leaseMs?: number;
  /** `--id` and the process's name; without it the process is "coordinator" and picks its own id. */
  id?: string;
  env?: Record<string, string>;
}

/** The built coordinator, creating the namespace with `shards` shards. */
export function spawnCoordinator(at: Target, o: CoordinatorOptions): Proc {
  const args = [...natsArgs(at), "--shards", String(o.shards)];
  if (o.replicas !== undefined) args.push("--replicas", String(o.replicas));
  if (o.leaseMs !== undefined) args.push("--lease-ms", String(o.leaseMs));
  if (o.id !== undefined) args.push("--id", o.id);
  return spawnNode(o.id ?? "coordinator", COORDINATOR_MAIN, args, { env: o.env });
}

export interface WorkerOptions {
  id: string;
  /** Agent modules (`--agents`). */
  agents: readonly string[];
  leaseMs?: number;
  /** The process's name, when not the id (an incarnation of a restarted worker). */
  name?: string;
  env?: Record<string, string>;
}

/** The built worker `id`, hosting the agents of `agents`. */
export function spawnWorker(at: Target, o: WorkerOptions): Proc {
  const args = [...natsArgs(at), "--agents", ...o.agents, "--id", o.id];
  if (o.leaseMs !== undefined) args.push("--lease-ms", String(o.leaseMs));
  return spawnNode(o.name ?? o.id, WORKER_MAIN, args, { env: o.env });
}

/** The coordinator leader's `ctl.status`, or undefined when no leader answers in time. */
export async function clusterStatus(
  nc: NatsConnection,
  namespace: string,
  timeoutMs = 1000,
): Promise<ClusterStatus | undefined> {
  try {
    const m = await nc.request(`troupe.${namespace}.ctl.status`, "", { timeout: timeoutMs });
    const s = m.json<ClusterStatus | { error: unknown }>();
    return "error" in s ? undefined : s;
  } catch {
    return undefined;
  }
}

/** Every shard assigned, and each of `ids` holds its even share (floor or floor + 1). */
export function balancedOver(s: ClusterStatus | undefined, ids: string[]): boolean {
  if (s === undefined || s.unassigned.length > 0) return false;
  const floor = Math.floor(s.shardCount / ids.length);
  return ids.every((id) => {
    const n = s.workers.find((w) => w.id === id)?.shards.length ?? 0;
    return n === floor || n === floor + 1;
  });
}

/** Waits until the leader reports `ids` balanced (see `balancedOver`): its status then. */
export function waitForBalanced(
  what: string,
  nc: NatsConnection,
  namespace: string,
  ids: string[],
  timeoutMs?: number,
): Promise<ClusterStatus> {
  return waitFor(
    what,
    async () => {
      const s = await clusterStatus(nc, namespace);
      return balancedOver(s, ids) ? s : undefined;
    },
    timeoutMs,
  );
}

/** Waits until worker `id` owns all `shards` shards: a namespace with one worker, settled. */
export async function waitForAllShards(
  nc: NatsConnection,
  namespace: string,
  id: string,
  shards: number,
  timeoutMs?: number,
): Promise<void> {
  await waitFor(
    "the worker to own every shard",
    async () => {
      const s = await clusterStatus(nc, namespace);
      return s?.workers.find((w) => w.id === id)?.shards.length === shards;
    },
    timeoutMs,
  );
}

/**
 * A coordinator (named "coordinator", no `--id`) and `workers`, each hosting `agents`, all
 * with `env`; waits until the workers are balanced and returns the leader's status then. Every
 * process's log tail is printed when they are not.
 */
export async function startBalanced(
  nc: NatsConnection,
  at: Target,
  o: { shards: number; workers: string[]; agents: readonly string[]; env?: Record<string, string> },
): Promise<ClusterStatus> {
  spawnCoordinator(at, { shards: o.shards, env: o.env });
  for (const id of o.workers) spawnWorker(at, { id, agents: o.agents, env: o.env });
  try {
    const what = `${o.workers.join(", ")} to own their shards`;
    return await waitForBalanced(what, nc, at.namespace, o.workers, 60_000);
  } catch (e) {
    for (const p of procs) console.log(logTail(p));
    throw e;
  }
}

/** Runs the built `troupe` CLI against a cluster: its exit code and output. */
export async function runCli(
  natsUrl: string,
  namespace: string,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(
      process.execPath,
      [CLI_MAIN, "--nats", natsUrl, "--namespace", namespace, ...args],
      { timeout: 60_000 },
    );
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: x.code ?? -1, stdout: x.stdout ?? "", stderr: x.stderr ?? "" };
  }
}
