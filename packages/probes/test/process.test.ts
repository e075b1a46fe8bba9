/**
 * `startProcess().run()` in a real process with real signals (test/fixtures/service.mjs): a
 * signal during start-up aborts start-up's signal; a start that gives up (SHUTDOWN) exits 0,
 * one that finishes anyway is stopped, one that fails otherwise exits as a failed start does.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");
const FIXTURE = join(here, "fixtures/service.mjs");

interface Fixture {
  child: ChildProcess;
  exited: Promise<number | string>;
  /** The messages of its JSON log lines so far. */
  said(): string[];
}

const children: ChildProcess[] = [];

function spawnFixture(mode: string): Fixture {
  const env = { ...process.env };
  delete env.OTEL_EXPORTER_OTLP_ENDPOINT; // no telemetry export from the fixture
  const child = spawn(process.execPath, [FIXTURE, mode], {
    cwd: repo,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let text = "";
  child.stdout?.on("data", (c: Buffer) => {
    text += c.toString("utf8");
  });
  child.stderr?.on("data", (c: Buffer) => {
    text += c.toString("utf8");
  });
  const exited = new Promise<number | string>((r) =>
    child.on("exit", (code, signal) => r(code ?? signal ?? "unknown")),
  );
  const said = () =>
    text.split("\n").flatMap((line) => {
      try {
        const msg = (JSON.parse(line) as { msg?: unknown }).msg;
        return typeof msg === "string" ? [msg] : [];
      } catch {
        return [];
      }
    });
  return { child, exited, said };
}

async function until(f: Fixture, msg: string): Promise<void> {
  while (!f.said().includes(msg)) {
    if (f.child.exitCode !== null) throw new Error(`exited before "${msg}": ${f.said()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeAll(async () => {
  // the fixture runs the built package, as the processes do
  await promisify(execFile)(
    "npx",
    ["turbo", "run", "build", "--filter=@troupe/probes", "--output-logs=errors-only"],
    { cwd: repo, timeout: 120_000 },
  );
}, 150_000);

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

describe("a stop signal during start-up", () => {
  it("aborts start-up; when it gives up (SHUTDOWN) the process exits 0, probes closed", async () => {
    const f = spawnFixture("gives-up");
    await until(f, "waiting");
    f.child.kill("SIGTERM");
    expect(await f.exited).toBe(0);
    expect(f.said().slice(1)).toEqual([
      "signal received: stopping",
      "probes closed",
      "stopped before start-up finished",
    ]);
  });

  it("a start-up past its waits finishes and is then stopped (exit 0)", async () => {
    const f = spawnFixture("finishes");
    await until(f, "waiting");
    f.child.kill("SIGINT");
    expect(await f.exited).toBe(0);
    expect(f.said().slice(1)).toEqual([
      "signal received: stopping",
      "service stopped",
      "probes closed",
    ]);
  });

  it("a start-up that fails otherwise exits as a failed start does (CONFIG_ERROR: 2)", async () => {
    const f = spawnFixture("fails");
    await until(f, "waiting");
    f.child.kill("SIGTERM");
    expect(await f.exited).toBe(2);
    expect(f.said()).toContain("fixture could not start");
    expect(f.said()).not.toContain("stopped before start-up finished");
  });
});

describe("a stop signal after start-up", () => {
  it("stops the service, closes the probes, exits 0", async () => {
    const f = spawnFixture("up");
    await until(f, "started");
    f.child.kill("SIGTERM");
    expect(await f.exited).toBe(0);
    expect(f.said().slice(1)).toEqual([
      "signal received: stopping",
      "service stopped",
      "probes closed",
    ]);
  });

  it("a second signal exits at once (1)", async () => {
    const f = spawnFixture("slow-stop");
    await until(f, "waiting");
    f.child.kill("SIGTERM");
    await until(f, "stopping slowly");
    f.child.kill("SIGTERM");
    expect(await f.exited).toBe(1);
    expect(f.said()).toContain("second signal: exiting at once");
  });
});
