/**
 * A child process of the dev cluster. Each runs in its own process group, so a Ctrl-C in the
 * terminal reaches only `troupe dev`, which then stops the children in order (workers drain
 * while the coordinator and NATS are still up). Output goes to a log file, optionally echoed
 * with the process name in front of each line.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, type WriteStream } from "node:fs";

export type Role = "nats-server" | "coordinator" | "worker";

export interface ChildSpec {
  name: string;
  role: Role;
  command: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  logFile: string;
  /** Called with every output line, prefixed by the name (the --verbose echo). */
  echo?: (line: string) => void;
}

export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

const TAIL_LINES = 40;

const live = new Set<DevChild>();
let sweepInstalled = false;

/** If `troupe dev` itself ends abruptly, its children must not outlive it. */
function installSweep(): void {
  if (sweepInstalled) return;
  sweepInstalled = true;
  process.once("exit", () => {
    for (const child of live) child.killNow();
  });
}

export class DevChild {
  readonly name: string;
  readonly role: Role;
  readonly logFile: string;
  readonly exited: Promise<ChildExit>;
  #exit: ChildExit | undefined;
  readonly #child: ChildProcess;
  readonly #log: WriteStream;
  readonly #tail: string[] = [];
  readonly #partial = { stdout: "", stderr: "" };
  readonly #echo: ((line: string) => void) | undefined;
  #logClosed: Promise<void>;

  constructor(spec: ChildSpec) {
    installSweep();
    this.name = spec.name;
    this.role = spec.role;
    this.logFile = spec.logFile;
    this.#echo = spec.echo;
    this.#log = createWriteStream(spec.logFile, { flags: "a" });
    this.#logClosed = new Promise((r) => this.#log.once("close", () => r()));
    this.#log.write(`--- ${new Date().toISOString()} ${spec.command} ${spec.args.join(" ")}\n`);
    this.#child = spawn(spec.command, spec.args, {
      cwd: spec.cwd,
      env: spec.env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    live.add(this);
    this.exited = new Promise<ChildExit>((resolve) => {
      this.#child.once("error", (error) => {
        this.#exit ??= { code: null, signal: null, error };
        live.delete(this);
        this.#log.end();
        resolve(this.#exit);
      });
      this.#child.once("close", (code, signal) => {
        this.#exit ??= { code, signal };
        live.delete(this);
        this.#log.end();
        resolve(this.#exit);
      });
    });
    this.#child.stdout?.on("data", (c: Buffer) => this.#record("stdout", c));
    this.#child.stderr?.on("data", (c: Buffer) => this.#record("stderr", c));
  }

  get pid(): number {
    return this.#child.pid ?? -1;
  }

  /** Whether the process is still running. */
  get running(): boolean {
    return this.#exit === undefined;
  }

  get exit(): ChildExit | undefined {
    return this.#exit;
  }

  /** The last lines it printed (for error messages); JSON log lines shown as text. */
  tail(lines = 15): string {
    return this.#tail
      .slice(-lines)
      .map((l) => `  ${readable(l)}`)
      .join("\n");
  }

  #record(stream: "stdout" | "stderr", chunk: Buffer): void {
    this.#log.write(chunk);
    const text = this.#partial[stream] + chunk.toString("utf8");
    const lines = text.split("\n");
    this.#partial[stream] = lines.pop() ?? "";
    for (const line of lines) {
      this.#tail.push(line);
      this.#echo?.(`[${this.name}] ${line}`);
    }
    if (this.#tail.length > TAIL_LINES) this.#tail.splice(0, this.#tail.length - TAIL_LINES);
  }

  /** SIGTERM, then SIGKILL if it is still running after `timeoutMs`. Resolves once it is gone. */
  async stop(timeoutMs: number): Promise<{ forced: boolean }> {
    if (!this.running) return { forced: false };
    this.#signal("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const gone = await Promise.race([
      this.exited.then(() => true),
      new Promise<false>((r) => {
        timer = setTimeout(() => r(false), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (gone) {
      await this.#logClosed;
      return { forced: false };
    }
    this.#signal("SIGKILL");
    await this.exited;
    await this.#logClosed;
    return { forced: true };
  }

  /** SIGKILL without waiting (last resort at exit). */
  killNow(): void {
    if (this.running) this.#signal("SIGKILL");
  }

  #signal(signal: NodeJS.Signals): void {
    try {
      this.#child.kill(signal);
    } catch {
      // already gone
    }
  }
}

/** Whether a pid is alive (signal 0 probes without sending anything). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

const LEVELS: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};

/** A pino JSON line as `LEVEL msg: err.message`; any other line as it is. */
export function readable(line: string): string {
  if (!line.startsWith("{")) return line;
  try {
    const entry = JSON.parse(line) as { level?: number; msg?: string; err?: { message?: string } };
    if (typeof entry.msg !== "string") return line;
    const level = LEVELS[entry.level ?? 30] ?? String(entry.level);
    const err = entry.err?.message === undefined ? "" : `: ${entry.err.message}`;
    return `${level} ${entry.msg}${err}`;
  } catch {
    return line;
  }
}
