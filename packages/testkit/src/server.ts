/** A real nats-server child process on loopback ports, with its own config and data dir. */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findNatsServer } from "./binary.js";
import { renderServerConfig, type ServerConfigSpec } from "./config.js";
import { isPortInUse, TestkitError, TestkitErrorCode } from "./errors.js";
import { type Logger, silentLogger } from "./logger.js";
import { freePorts, LOOPBACK } from "./ports.js";
import { trackDir, trackPid, untrackDir, untrackPid } from "./registry.js";

export interface NatsServerOptions {
  /** Enable JetStream (file storage in the server's data dir). Default true. */
  jetstream?: boolean;
  /** max_payload in bytes (the server's default is 1 MiB). */
  maxPayload?: number;
  /** Extra configuration text appended to the generated config file. */
  config?: string;
  /** Serve the HTTP monitoring endpoint (/healthz, /varz, /jsz). Default true. */
  monitor?: boolean;
  /** server_name; default `troupe-<client port>`. */
  serverName?: string;
  /** The binary to run; default findNatsServer(). */
  binary?: string;
  /** How long to wait for the server to become ready. Default 10 s. */
  startTimeoutMs?: number;
  /** How long stop() waits after SIGTERM before it sends SIGKILL. Default 5 s. */
  stopTimeoutMs?: number;
  logger?: Logger;
}

export interface NatsServerHandle {
  readonly kind: "process";
  readonly serverName: string;
  /** nats://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  /** http://127.0.0.1:<port>, or undefined when monitoring is off. */
  readonly monitorUrl: string | undefined;
  /** The cluster (route) port, for cluster members. */
  readonly clusterPort: number | undefined;
  /** The server's own directory: config file and JetStream store_dir. */
  readonly dataDir: string;
  readonly configFile: string;
  /** The pid of the current process, or of the last one once it has exited. */
  readonly pid: number;
  /** Whether the process is alive (false after stop, kill or a crash). */
  readonly running: boolean;
  /** The last `lines` lines the server logged (it logs to stderr). */
  logTail(lines?: number): string;
  /** SIGTERM, wait for exit, SIGKILL after stopTimeoutMs. Idempotent. */
  stop(): Promise<void>;
  /** Sends a signal; for terminating signals, waits until the process has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Stops if running, starts again on the same ports and data dir, waits until ready. */
  restart(): Promise<void>;
  /** stop() and remove the data dir. Idempotent; the handle is unusable afterwards. */
  cleanup(): Promise<void>;
}

/** How a process decides it is ready; cluster members wait for the JetStream meta layer. */
export interface ServerProcessSpec {
  binary: string;
  config: ServerConfigSpec;
  dataDir: string;
  startTimeoutMs: number;
  stopTimeoutMs: number;
  logger: Logger;
}

const TERMINATING: ReadonlySet<NodeJS.Signals> = new Set([
  "SIGKILL",
  "SIGTERM",
  "SIGINT",
  "SIGQUIT",
  "SIGABRT",
]);
const LOG_LINES_KEPT = 200;
const POLL_MS = 50;

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Resolves true if `p` settled within `ms`, false otherwise; never leaves a timer behind. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** One read of the server's INFO line: the cheapest "accepts connections" check. */
function probeClientPort(port: number): Promise<boolean> {
  return new Promise((resolveProbe) => {
    const socket = tcpConnect({ host: LOOPBACK, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolveProbe(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("error", () => done(false));
    socket.once("data", (chunk) => done(chunk.toString("latin1").startsWith("INFO")));
  });
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

class ServerProcess implements NatsServerHandle {
  readonly kind = "process";
  readonly configFile: string;
  private child: ChildProcess | undefined;
  private exited: Promise<Exit> = Promise.resolve({ code: null, signal: null });
  private alive = false;
  private lastPid = -1;
  private stopping: Promise<void> | undefined;
  private cleaning: Promise<void> | undefined;
  private closed = false;
  private readonly log: string[] = [];
  private partial = "";

  constructor(private readonly spec: ServerProcessSpec) {
    this.configFile = join(spec.dataDir, "nats-server.conf");
    writeFileSync(this.configFile, renderServerConfig(spec.config));
  }

  get serverName(): string {
    return this.spec.config.serverName;
  }
  get port(): number {
    return this.spec.config.port;
  }
  get url(): string {
    return `nats://${LOOPBACK}:${this.port}`;
  }
  get monitorUrl(): string | undefined {
    const p = this.spec.config.monitorPort;
    return p === undefined ? undefined : `http://${LOOPBACK}:${p}`;
  }
  get clusterPort(): number | undefined {
    return this.spec.config.cluster?.port;
  }
  get dataDir(): string {
    return this.spec.dataDir;
  }
  get pid(): number {
    return this.lastPid;
  }
  get running(): boolean {
    return this.alive;
  }

  logTail(lines = 30): string {
    const all = this.partial === "" ? this.log : [...this.log, this.partial];
    return all.slice(-lines).join("\n");
  }

  private record(chunk: Buffer): void {
    const text = this.partial + chunk.toString("utf8");
    const lines = text.split("\n");
    this.partial = lines.pop() ?? "";
    for (const line of lines) {
      this.log.push(line);
      this.spec.logger.debug({ server: this.serverName, line }, "nats-server");
    }
    if (this.log.length > LOG_LINES_KEPT) this.log.splice(0, this.log.length - LOG_LINES_KEPT);
  }

  /** Spawns the process and waits until it is ready. */
  async start(): Promise<void> {
    if (this.closed) {
      throw new TestkitError(TestkitErrorCode.HANDLE_CLOSED, `${this.serverName} was cleaned up`);
    }
    if (this.alive) return;
    this.log.length = 0;
    this.partial = "";
    const child = spawn(this.spec.binary, ["-c", this.configFile], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    this.exited = new Promise<Exit>((resolveExit) => {
      child.once("error", (error) => {
        this.alive = false;
        resolveExit({ code: null, signal: null, error });
      });
      child.once("exit", (code, signal) => {
        this.alive = false;
        if (child.pid !== undefined) untrackPid(child.pid);
        resolveExit({ code, signal });
      });
    });
    if (child.pid !== undefined) {
      this.alive = true;
      this.lastPid = child.pid;
      trackPid(child.pid);
    }
    child.stdout?.on("data", (c: Buffer) => this.record(c));
    child.stderr?.on("data", (c: Buffer) => this.record(c));
    // A fixture somebody forgot to clean up must not keep the test process alive; the
    // exit-time registry kills it.
    child.unref();
    for (const stream of [child.stdout, child.stderr]) {
      (stream as unknown as { unref?: () => void } | null)?.unref?.();
    }
    this.spec.logger.debug(
      { server: this.serverName, pid: child.pid, url: this.url },
      "nats-server started",
    );
    await this.waitReady(child);
  }

  private async probe(): Promise<{ ok: boolean; detail: string }> {
    const monitorUrl = this.monitorUrl;
    if (monitorUrl === undefined) {
      const ok = await probeClientPort(this.port);
      return { ok, detail: ok ? "" : "client port not accepting connections" };
    }
    try {
      // The full health check: for a single server it also waits until JetStream has
      // recovered its streams; for a cluster member, until it is current with the meta
      // leader and its stream/consumer replicas have caught up.
      const res = await fetch(`${monitorUrl}/healthz`, { signal: AbortSignal.timeout(2000) });
      const body = await res.text();
      return { ok: res.ok, detail: `healthz ${res.status}: ${body.trim()}` };
    } catch (e) {
      return { ok: false, detail: `healthz: ${(e as Error).message}` };
    }
  }

  private async waitReady(child: ChildProcess): Promise<void> {
    const deadline = Date.now() + this.spec.startTimeoutMs;
    let detail = "not probed yet";
    let exit: Exit | undefined;
    void this.exited.then((e) => {
      exit = e;
    });
    for (;;) {
      if (exit !== undefined) throw this.startFailure(exit);
      const probe = await this.probe();
      if (probe.ok) return;
      detail = probe.detail;
      if (Date.now() >= deadline) break;
      await delay(POLL_MS);
    }
    if (child === this.child && this.alive) {
      child.kill("SIGKILL");
      await this.exited;
    }
    throw new TestkitError(
      TestkitErrorCode.NATS_SERVER_START_TIMEOUT,
      `nats-server ${this.serverName} (${this.url}) was not ready after ` +
        `${this.spec.startTimeoutMs} ms (last check: ${detail}); log tail:\n${this.logTail()}`,
      { serverLog: this.logTail() },
    );
  }

  private startFailure(exit: Exit): TestkitError {
    const tail = this.logTail();
    if (exit.error !== undefined) {
      return new TestkitError(
        TestkitErrorCode.NATS_SERVER_START_FAILED,
        `could not run ${this.spec.binary}: ${exit.error.message}`,
        { cause: exit.error, serverLog: tail },
      );
    }
    const how = exit.signal !== null ? `signal ${exit.signal}` : `code ${exit.code}`;
    if (/address already in use/i.test(tail)) {
      return new TestkitError(
        TestkitErrorCode.PORT_IN_USE,
        `nats-server ${this.serverName} could not bind its ports (exited with ${how}); log tail:\n${tail}`,
        { retryAfterMs: 0, serverLog: tail },
      );
    }
    return new TestkitError(
      TestkitErrorCode.NATS_SERVER_START_FAILED,
      `nats-server ${this.serverName} exited with ${how} while starting; log tail:\n${tail}`,
      { serverLog: tail },
    );
  }

  stop(): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.alive) return Promise.resolve();
    if (this.stopping !== undefined) return this.stopping;
    this.stopping = (async () => {
      child.kill("SIGTERM");
      if (!(await settlesWithin(this.exited, this.spec.stopTimeoutMs))) {
        this.spec.logger.warn(
          { server: this.serverName, pid: child.pid, timeoutMs: this.spec.stopTimeoutMs },
          "nats-server ignored SIGTERM; sending SIGKILL",
        );
        child.kill("SIGKILL");
        await this.exited;
      }
    })().finally(() => {
      this.stopping = undefined;
    });
    return this.stopping;
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.alive) return;
    child.kill(signal);
    if (TERMINATING.has(signal)) await this.exited;
  }

  async restart(): Promise<void> {
    if (this.closed) {
      throw new TestkitError(TestkitErrorCode.HANDLE_CLOSED, `${this.serverName} was cleaned up`);
    }
    await this.stop();
    // The old process's listeners are closed once it has exited, but another process can
    // grab a port in between; a few short retries cover sockets still being torn down.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.start();
        return;
      } catch (e) {
        if (!isPortInUse(e) || attempt >= 5) throw e;
        await delay(200 * attempt);
      }
    }
  }

  cleanup(): Promise<void> {
    if (this.cleaning !== undefined) return this.cleaning;
    this.closed = true;
    this.cleaning = (async () => {
      await this.stop();
      rmSync(this.spec.dataDir, { recursive: true, force: true });
      untrackDir(this.spec.dataDir);
    })();
    return this.cleaning;
  }
}

/** A fresh temp directory, registered for removal at process exit. */
export function makeDataDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  trackDir(dir);
  return dir;
}

/** Creates a (not yet started) server process; cluster.ts starts several at once. */
export function createServerProcess(spec: ServerProcessSpec): ServerProcess {
  return new ServerProcess(spec);
}

export type { ServerProcess };

const START_ATTEMPTS = 5;

/** Starts a nats-server process (JetStream on by default) on free loopback ports. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const binary = options.binary ?? findNatsServer();
  const jetstream = options.jetstream ?? true;
  const monitor = options.monitor ?? true;
  for (let attempt = 1; ; attempt++) {
    const [port, monitorPort] = await freePorts(monitor ? 2 : 1);
    if (port === undefined) throw new Error("freePorts returned no port");
    const dataDir = makeDataDir("troupe-nats-");
    const server = createServerProcess({
      binary,
      dataDir,
      config: {
        serverName: options.serverName ?? `troupe-${port}`,
        port,
        monitorPort,
        storeDir: jetstream ? dataDir : undefined,
        maxPayload: options.maxPayload,
        cluster: undefined,
        extra: options.config,
      },
      startTimeoutMs: options.startTimeoutMs ?? 10_000,
      stopTimeoutMs: options.stopTimeoutMs ?? 5_000,
      logger: options.logger ?? silentLogger,
    });
    try {
      await server.start();
      return server;
    } catch (e) {
      await server.cleanup();
      if (!isPortInUse(e) || attempt >= START_ATTEMPTS) throw e;
      options.logger?.debug(
        { attempt, err: e },
        "port taken before nats-server bound it; retrying",
      );
    }
  }
}
