/**
 * `troupe dev`: a local cluster in child processes — nats-server (JetStream, data under
 * .troupe/dev), one coordinator, N workers hosting the demo's agents (or yours) — then the
 * demo conversation through a client, until Ctrl-C. Without a nats-server binary it runs
 * the embedded demo instead.
 */

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { openClient, sealingOf } from "../client.js";
import { DevChild } from "../dev/child.js";
import { DEFAULT_GOAL, DEMO_AGENTS, placementTable, runClusterDemo } from "../dev/demo.js";
import { layout } from "../dev/layout.js";
import { storedShardCount } from "../dev/namespace.js";
import { DEFAULT_PORT, locateNatsServer, startDevNats } from "../dev/nats-server.js";
import { readiness } from "../dev/readiness.js";
import {
  type DevState,
  readState,
  removeState,
  stillRuns,
  stopLeftovers,
  writeState,
} from "../dev/state.js";
import { duration, messageOf, shardRanges, table } from "../format.js";
import { CliError, failure, type Io, usageError, writeLine } from "../io.js";
import { openNats } from "../nats.js";
import { type Progress, progress } from "../progress.js";
import {
  DEFAULT_NAMESPACE,
  type GlobalOptions,
  resolveSettings,
  type Settings,
} from "../settings.js";
import { type ClusterStatus, requestStatus } from "./status.js";

export interface DevOptions extends GlobalOptions {
  /** Agent modules for the workers; default the demo's agents. */
  agents?: string[];
  workers?: number;
  /** Run the demo, then stop everything and exit. */
  once?: boolean;
  /** false with --no-demo. */
  demo?: boolean;
  /** NATS client port: default 4222 if free, 0 = any free port. */
  port?: number;
  /** Where NATS data, logs and the state file go; default <repo>/.troupe/dev. */
  dataDir?: string;
  /** Delete the NATS data first (a fresh namespace). */
  reset?: boolean;
  /** Also print the children's output, each line prefixed with the process name. */
  verbose?: boolean;
  /** Shard count for a new namespace (passed to the coordinator). */
  shards?: number;
  readyTimeout?: number;
}

/** How long workers get to drain on SIGTERM before they are killed. */
const WORKER_STOP_MS = 20_000;
const COORDINATOR_STOP_MS = 5_000;
const NATS_STOP_MS = 10_000;
const STATUS_POLL_MS = 200;
const DEMO_TIMEOUT_MS = 30_000;

export async function dev(goalWords: string[], options: DevOptions, io: Io): Promise<number> {
  const lay = layout();
  const settings = resolveSettings(
    {
      namespace: options.namespace,
      channelKeysDir: options.channelKeysDir,
      sealWith: options.sealWith,
    },
    io,
  );
  // bad keys fail here, not as workers that exit one after another
  await sealingOf(settings);
  const workerCount = options.workers ?? 2;
  if (!Number.isInteger(workerCount) || workerCount < 1 || workerCount > 16) {
    throw usageError("--workers must be a whole number from 1 to 16");
  }
  const port = options.port ?? DEFAULT_PORT;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw usageError("--port must be a port number (0 = any free port)");
  }
  if (options.nats !== undefined) {
    writeLine(io.stderr, "note: troupe dev starts its own nats-server; --nats is ignored");
  }
  const goal = goalWords.join(" ").trim() || DEFAULT_GOAL;

  const located = locateNatsServer(io.env);
  if ("missing" in located) {
    writeLine(
      io.stderr,
      "nats-server not found (run bash scripts/setup.sh); running the embedded runtime instead",
    );
    writeLine(io.stderr, `  (${located.missing})`);
    return embeddedDemo(goalWords, io);
  }

  const agents = (options.agents ?? []).map((a) => resolve(io.cwd, a));
  const customAgents = agents.length > 0;
  if (!customAgents) agents.push(lay.demoAgents);
  for (const file of [lay.coordinatorMain, lay.workerMain, ...agents]) {
    if (!existsSync(file)) {
      throw failure(
        `${shown(io, file)} does not exist: build first (npm run build, or npm start does both)`,
      );
    }
  }

  const devDir = resolve(io.cwd, options.dataDir ?? lay.devDir);
  const logDir = join(devDir, "logs");
  const natsDir = join(devDir, "nats");
  const previous = readState(devDir);
  if (
    previous !== undefined &&
    previous.pid !== process.pid &&
    stillRuns(previous.pid, /\sdev(\s|$)/)
  ) {
    throw failure(
      `another troupe dev (pid ${previous.pid}, NATS ${previous.natsUrl ?? "starting"}) uses ` +
        `${shown(io, devDir)}: stop it first, or give this one another --data-dir`,
    );
  }
  if (previous !== undefined) {
    const stopped = await stopLeftovers(previous);
    if (stopped.length > 0) {
      writeLine(
        io.stderr,
        `stopped processes an earlier troupe dev left running: ${stopped.join(", ")}`,
      );
    }
    removeState(devDir);
  }
  if (options.reset) rmSync(natsDir, { recursive: true, force: true });
  mkdirSync(logDir, { recursive: true });
  mkdirSync(natsDir, { recursive: true });

  const cluster = new DevCluster(io, devDir, settings, options.verbose === true);
  const unregister = io.onInterrupt?.((signal) => cluster.interrupt(signal));
  try {
    return await cluster.run({
      binary: located.binary,
      port,
      natsDir,
      logDir,
      agents,
      workerCount,
      shards: options.shards,
      readyTimeoutMs: options.readyTimeout ?? 60_000,
      demo: options.demo !== false && !customAgents,
      customAgents,
      once: options.once === true,
      goal,
    });
  } finally {
    unregister?.();
  }
}

interface RunPlan {
  binary: string;
  port: number;
  natsDir: string;
  logDir: string;
  agents: string[];
  workerCount: number;
  shards: number | undefined;
  readyTimeoutMs: number;
  demo: boolean;
  customAgents: boolean;
  once: boolean;
  goal: string;
}

/** The running cluster: its children, the interrupt state, the ordered shutdown. */
class DevCluster {
  readonly #io: Io;
  readonly #devDir: string;
  readonly #settings: Settings;
  readonly #verbose: boolean;
  readonly #children: DevChild[] = [];
  /** Aborted on the first Ctrl-C, or when a process the cluster cannot do without exits. */
  readonly #stop = new AbortController();
  #interruptedAt = 0;
  #fatal: string | undefined;
  #stopping = false;
  #natsUrl: string | undefined;
  #active: Progress | undefined;
  /** Set once every worker has its shards. */
  #ready = false;

  constructor(io: Io, devDir: string, settings: Settings, verbose: boolean) {
    this.#io = io;
    this.#devDir = devDir;
    this.#settings = settings;
    this.#verbose = verbose;
  }

  interrupt(signal: NodeJS.Signals): void {
    if (!this.#stop.signal.aborted) {
      this.#interruptedAt = Date.now();
      writeLine(this.#io.stderr, `\n${signal}: stopping the dev cluster (workers drain first)…`);
      this.#stop.abort();
      return;
    }
    // the same Ctrl-C can arrive twice (from the terminal and forwarded by npm): only a
    // later one means "stop waiting"
    if (Date.now() - this.#interruptedAt < 1000) return;
    writeLine(this.#io.stderr, `${signal} again: killing the dev cluster's processes`);
    for (const child of this.#children) child.killNow();
  }

  async run(plan: RunPlan): Promise<number> {
    let code = 0;
    try {
      code = await this.#startAndServe(plan);
    } catch (e) {
      this.#active?.fail();
      if (!(e instanceof CliError)) throw e;
      // Ctrl-C while starting: whatever was waiting gave up; that is a clean stop (a fatal
      // exit, which also aborts, is reported below)
      if (e instanceof Interrupted || this.#stop.signal.aborted) {
        code = 0;
      } else {
        writeLine(this.#io.stderr, `troupe dev: ${e.message}`);
        code = e.exitCode;
      }
    } finally {
      await this.#shutdown();
    }
    if (this.#fatal !== undefined) {
      writeLine(this.#io.stderr, `troupe dev: ${this.#fatal}`);
      return 1;
    }
    return code;
  }

  async #startAndServe(plan: RunPlan): Promise<number> {
    const io = this.#io;
    const signal = this.#stop.signal;
    const echo = this.#verbose ? (line: string) => writeLine(io.stderr, line) : undefined;
    // several processes on one machine: each takes a free port for its probes (it logs which)
    const env = { ...io.env, TROUPE_HTTP_PORT: "0" } as NodeJS.ProcessEnv;
    // the workers seal with the same keys as the demo's client (the path made absolute)
    const keys = this.#settings.channelKeysDir;
    delete env.TROUPE_CHANNEL_KEYS_DIR;
    delete env.TROUPE_SEAL_WITH;
    if (keys !== undefined) {
      env.TROUPE_CHANNEL_KEYS_DIR = keys;
      if (this.#settings.sealWith !== undefined) env.TROUPE_SEAL_WITH = this.#settings.sealWith;
    }
    const started = Date.now();

    this.#saveState(); // claims the data dir before anything starts
    let spinner = this.#spinner("starting nats-server");
    const nats = await startDevNats({
      binary: plan.binary,
      port: plan.port,
      dataDir: plan.natsDir,
      logDir: plan.logDir,
      env,
      signal,
      ...(echo === undefined ? {} : { echo }),
    }).catch((e: unknown) => {
      this.#stepFailed(spinner, "nats-server did not start");
      throw e;
    });
    this.#adopt(nats.child);
    this.#natsUrl = nats.url;
    this.#saveState();
    spinner.succeed(
      `nats-server (pid ${nats.child.pid}) on ${nats.url}, JetStream data in ${shown(io, plan.natsDir)}`,
    );

    const settings: Settings = { ...this.#settings, servers: [nats.url], natsUrl: nats.url };
    const nc = await openNats(settings);
    try {
      spinner = this.#spinner("starting the coordinator");
      const coordinatorArgs = [
        "--nats",
        nats.url,
        "--namespace",
        settings.namespace,
        "--id",
        "coordinator",
      ];
      // the shard count is fixed when a namespace is created: an earlier run's count stands
      const stored = await storedShardCount(nc, settings.namespace);
      if (plan.shards !== undefined && stored !== undefined && stored !== plan.shards) {
        throw usageError(
          `namespace ${settings.namespace} in ${shown(io, plan.natsDir)} already has ${stored} shards; ` +
            "add --reset to start from empty NATS data with another count",
        );
      }
      const shards = plan.shards ?? stored;
      if (shards !== undefined) coordinatorArgs.push("--shards", String(shards));
      this.#adopt(
        new DevChild({
          name: "coordinator",
          role: "coordinator",
          command: process.execPath,
          args: [layout().coordinatorMain, ...coordinatorArgs],
          cwd: layout().root,
          env,
          logFile: join(plan.logDir, "coordinator.log"),
          ...(echo === undefined ? {} : { echo }),
        }),
      );
      this.#saveState();
      // workers start once the namespace exists and a leader answers
      const leader = await this.#waitFor(
        nc,
        settings,
        plan.readyTimeoutMs,
        (s) => (s.leader !== null ? { done: true } : { text: "waiting for a leader" }),
        (text) => {
          spinner.text = `starting the coordinator: ${text}`;
        },
      ).catch((e: unknown) => {
        this.#stepFailed(spinner, "the coordinator did not come up");
        throw e;
      });
      spinner.succeed(
        `coordinator (pid ${this.#child("coordinator")?.pid}) leads namespace ${settings.namespace} ` +
          `(${leader.shardCount} shards)`,
      );

      const ids = Array.from({ length: plan.workerCount }, (_, i) => `worker-${i + 1}`);
      spinner = this.#spinner(`starting ${ids.length} worker${ids.length === 1 ? "" : "s"}`);
      for (const id of ids) {
        this.#adopt(
          new DevChild({
            name: id,
            role: "worker",
            command: process.execPath,
            args: [
              layout().workerMain,
              "--nats",
              nats.url,
              "--namespace",
              settings.namespace,
              "--id",
              id,
              ...plan.agents.flatMap((a) => ["--agents", a]),
            ],
            cwd: layout().root,
            env,
            logFile: join(plan.logDir, `${id}.log`),
            ...(echo === undefined ? {} : { echo }),
          }),
        );
      }
      this.#saveState();
      const ready = await this.#waitFor(
        nc,
        settings,
        plan.readyTimeoutMs,
        (s) => readiness(s, ids),
        (text) => {
          spinner.text = `starting ${ids.length} workers: ${text}`;
        },
      ).catch((e: unknown) => {
        this.#stepFailed(spinner, "the workers did not start");
        throw e;
      });
      this.#ready = true;
      spinner.succeed(`cluster ready in ${duration(Date.now() - started)}`);

      writeLine(io.stdout);
      writeLine(io.stdout, this.#processTable(ready));
      this.#printHints(ready, nats.url, plan.logDir);

      let demoOk = true;
      if (plan.demo) {
        writeLine(io.stdout);
        const client = await openClient(settings);
        try {
          const outcome = await Promise.race([
            runClusterDemo(client, {
              goal: plan.goal,
              key: "demo",
              timeoutMs: DEMO_TIMEOUT_MS,
              print: (line) => writeLine(io.stdout, line),
            }),
            aborted(signal).then(() => undefined),
          ]);
          if (outcome === undefined) throw new Interrupted();
          demoOk = outcome.ok;
        } finally {
          await client.close().catch(() => {});
        }
        const after = await requestStatus(nc, settings).catch(() => undefined);
        if (after !== undefined) {
          writeLine(io.stdout);
          writeLine(io.stdout, "Where the demo's agents live (shard = hash of type/key):");
          writeLine(io.stdout, placementTable(after, DEMO_AGENTS));
        }
      } else if (plan.customAgents) {
        writeLine(io.stdout, "(custom agents: the planner demo is skipped)");
      }

      if (plan.once) {
        writeLine(io.stdout);
        return demoOk ? 0 : 1;
      }
      writeLine(io.stdout);
      writeLine(io.stdout, "Cluster ready. Press Ctrl-C to stop it (workers drain first).");
      await aborted(signal);
      return 0;
    } finally {
      await nc.close().catch(() => {});
    }
  }

  /** Polls status until `check` says done; fails early if a child dies or on Ctrl-C. */
  async #waitFor(
    nc: NatsConnection,
    settings: Settings,
    timeoutMs: number,
    check: (s: ClusterStatus) => { done: true } | { text: string },
    progress: (text: string) => void,
  ): Promise<ClusterStatus> {
    const deadline = Date.now() + timeoutMs;
    let last = "no answer yet";
    for (;;) {
      if (this.#stop.signal.aborted) throw new Interrupted();
      const dead = this.#children.find((c) => !c.running);
      if (dead !== undefined) {
        throw failure(
          `${dead.name} exited while starting (${exitText(dead)}); its log ` +
            `${shown(this.#io, dead.logFile)} ends with:\n${dead.tail()}`,
        );
      }
      try {
        const s = await requestStatus(nc, settings, 1000);
        const verdict = check(s);
        if ("done" in verdict) return s;
        last = verdict.text;
      } catch (e) {
        last =
          e instanceof CliError && /no coordinator/.test(e.message)
            ? "waiting for the coordinator to answer"
            : messageOf(e);
      }
      progress(last);
      if (Date.now() >= deadline) {
        throw failure(
          `not ready after ${duration(timeoutMs)} (${last}); logs in ${shown(this.#io, join(this.#devDir, "logs"))}`,
        );
      }
      await sleep(STATUS_POLL_MS, this.#stop.signal);
    }
  }

  #processTable(status: ClusterStatus): string {
    const byId = new Map(status.workers.map((w) => [w.id, w]));
    const rows = this.#children.map((c) => {
      const w = byId.get(c.name);
      const role =
        c.role === "nats-server"
          ? "NATS + JetStream"
          : c.role === "coordinator"
            ? "coordinator"
            : "worker";
      const shards =
        c.role === "worker"
          ? w === undefined
            ? "-"
            : `${w.shards.length} (${shardRanges(w.shards)})`
          : "-";
      return [c.name, c.pid, role, shards];
    });
    return table(["process", "pid", "role", "shards"], rows);
  }

  #printHints(status: ClusterStatus, url: string, logDir: string): void {
    const io = this.#io;
    const flags = [
      url === `nats://127.0.0.1:${DEFAULT_PORT}` ? "" : ` --nats ${url}`,
      this.#settings.namespace === DEFAULT_NAMESPACE
        ? ""
        : ` --namespace ${this.#settings.namespace}`,
      this.#settings.channelKeysDir === undefined
        ? ""
        : ` --channel-keys-dir ${shown(io, this.#settings.channelKeysDir)}`,
      this.#settings.sealWith === undefined ? "" : ` --seal-with ${this.#settings.sealWith}`,
    ].join("");
    const cli = shown(io, layout().cliMain);
    const lines = [
      "",
      `NATS       ${url}   namespace ${status.namespace}, ${status.shardCount} shards, leader ${status.leader ?? "?"}`,
      `Logs       ${shown(io, logDir)}/<process>.log   (--verbose prints them here)`,
      `Try        (troupe = node ${cli})`,
      `  troupe status${flags}`,
      `  troupe request planner/mine '{"type":"plan","goal":"plan a team offsite"}' --timeout 10000${flags}`,
      `  troupe send planner/mine '{"type":"plan","goal":"write the release notes"}'${flags}`,
    ];
    for (const line of lines) writeLine(io.stdout, line);
  }

  /** One spinner at a time (on stderr); a new one stops the last. */
  #spinner(text: string): Progress {
    this.#active?.stop();
    this.#active = progress(this.#io.stderr, text);
    return this.#active;
  }

  #child(name: string): DevChild | undefined {
    return this.#children.find((c) => c.name === name);
  }

  /** A step that failed says so, unless Ctrl-C is why it gave up. */
  #stepFailed(spinner: Progress, text: string): void {
    if (this.#stop.signal.aborted && this.#fatal === undefined) spinner.stop();
    else spinner.fail(text);
  }

  #adopt(child: DevChild): void {
    this.#children.push(child);
    void child.exited.then(() => {
      // while starting, #waitFor reports a death with the log tail
      if (this.#stopping || !this.#ready) return;
      const what = `${child.name} (pid ${child.pid}) exited unexpectedly (${exitText(child)}); log ${shown(this.#io, child.logFile)}`;
      if (child.role === "worker") {
        // the coordinator gives its shards to the others; the cluster carries on
        writeLine(this.#io.stderr, `${what}; its shards move to the other workers`);
        return;
      }
      this.#fatal ??= `${what}\n${child.tail()}`;
      this.#stop.abort();
    });
  }

  #saveState(): void {
    const state: DevState = {
      pid: process.pid,
      namespace: this.#settings.namespace,
      startedAt: new Date().toISOString(),
      children: this.#children.map((c) => ({
        name: c.name,
        role: c.role,
        pid: c.pid,
        program:
          c.role === "nats-server" ? "nats-server" : c.role === "worker" ? "worker" : "coordinator",
      })),
      ...(this.#natsUrl === undefined ? {} : { natsUrl: this.#natsUrl }),
    };
    writeState(this.#devDir, state);
  }

  /** Workers first (SIGTERM: they drain their shards), then the coordinator, then NATS. */
  async #shutdown(): Promise<void> {
    this.#stopping = true;
    if (this.#children.length === 0) {
      removeState(this.#devDir);
      return;
    }
    const started = Date.now();
    const spinner = this.#spinner("stopping the dev cluster");
    const stopped: string[] = [];
    const forced: string[] = [];
    const stopGroup = async (role: DevChild["role"], timeoutMs: number, text: string) => {
      const group = this.#children.filter((c) => c.role === role);
      if (group.length === 0) return;
      spinner.text = text;
      const results = await Promise.all(group.map((c) => c.stop(timeoutMs)));
      group.forEach((c, i) => {
        stopped.push(`${c.name} (pid ${c.pid})`);
        if (results[i]?.forced) forced.push(c.name);
      });
    };
    await stopGroup("worker", WORKER_STOP_MS, "stopping workers (they drain their shards)");
    await stopGroup("coordinator", COORDINATOR_STOP_MS, "stopping the coordinator");
    await stopGroup("nats-server", NATS_STOP_MS, "stopping nats-server");
    removeState(this.#devDir);
    const note = forced.length > 0 ? `; killed after the timeout: ${forced.join(", ")}` : "";
    spinner.succeed(`stopped ${stopped.join(", ")} in ${duration(Date.now() - started)}${note}`);
  }
}

/** The embedded demo (the runtime in one process), for machines without nats-server. */
async function embeddedDemo(goalWords: string[], io: Io): Promise<number> {
  const main = layout().demoMain;
  if (!existsSync(main)) {
    throw failure(`${shown(io, main)} does not exist: build first (npm run build)`);
  }
  const child = spawn(process.execPath, [main, ...goalWords], {
    cwd: layout().root,
    env: { ...io.env } as NodeJS.ProcessEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.pipe(io.stdout, { end: false });
  child.stderr.pipe(io.stderr, { end: false });
  const unregister = io.onInterrupt?.(() => child.kill("SIGTERM"));
  try {
    return await new Promise<number>((resolveExit, reject) => {
      child.once("error", reject);
      child.once("close", (code) => resolveExit(code ?? 1));
    });
  } finally {
    unregister?.();
  }
}

class Interrupted extends CliError {
  constructor() {
    super(0, "interrupted");
  }
}

function exitText(child: DevChild): string {
  const exit = child.exit;
  if (exit === undefined) return "running";
  if (exit.error !== undefined) return exit.error.message;
  return exit.signal !== null ? `signal ${exit.signal}` : `code ${exit.code}`;
}

/** A path as the user would type it from where they are. */
function shown(io: Io, path: string): string {
  const rel = relative(io.cwd, path);
  return rel === "" ? "." : rel.startsWith("..") ? path : rel;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((r) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      r();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

function aborted(signal: AbortSignal): Promise<void> {
  return signal.aborted ? Promise.resolve() : sleepForever(signal);
}

function sleepForever(signal: AbortSignal): Promise<void> {
  return new Promise((r) => signal.addEventListener("abort", () => r(), { once: true }));
}
