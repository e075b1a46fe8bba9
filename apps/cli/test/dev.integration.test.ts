/**
 * `troupe dev` as people run it (`npm start` runs `node apps/cli/dist/main.js dev`): real child
 * processes — nats-server, a coordinator, two workers — brought up, used and brought down.
 * Each run gets its own data dir and a free port, so a developer's own `troupe dev` (on
 * .troupe/dev and port 4222) is left alone.
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { natsServerMissing } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const root = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");
const cliMain = join(root, "apps/cli/dist/main.js");
const built = [
  cliMain,
  join(root, "apps/worker/dist/main.js"),
  join(root, "apps/coordinator/dist/main.js"),
  join(root, "examples/demo/dist/index.js"),
  join(root, "examples/demo/dist/main.js"),
];

const natsMissing = natsServerMissing();

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface Running {
  child: ChildProcess;
  output: () => { stdout: string; stderr: string };
  finished: Promise<Finished>;
  /** Resolves once stdout contains `text`; rejects if the process ends first. */
  waitFor(text: string, timeoutMs: number): Promise<void>;
}

const dirs: string[] = [];
const spawned: ChildProcess[] = [];

function troupe(args: string[], env: NodeJS.ProcessEnv = {}): Running {
  const child = spawn(process.execPath, [cliMain, ...args], {
    cwd: root,
    env: { ...process.env, ...env, FORCE_COLOR: "0" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  spawned.push(child);
  let stdout = "";
  let stderr = "";
  const listeners = new Set<() => void>();
  child.stdout.on("data", (c: Buffer) => {
    stdout += c.toString();
    for (const l of listeners) l();
  });
  child.stderr.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  const finished = new Promise<Finished>((r) =>
    child.once("close", (code, signal) => {
      for (const l of listeners) l();
      r({ code, signal, stdout, stderr });
    }),
  );
  return {
    child,
    output: () => ({ stdout, stderr }),
    finished,
    waitFor(text, timeoutMs) {
      return new Promise((resolveWait, reject) => {
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`no "${text}" after ${timeoutMs} ms\n${stdout}\n${stderr}`));
        }, timeoutMs);
        function check() {
          if (stdout.includes(text)) {
            clearTimeout(timer);
            listeners.delete(check);
            resolveWait();
          } else if (child.exitCode !== null || child.signalCode !== null) {
            clearTimeout(timer);
            listeners.delete(check);
            reject(new Error(`exited before "${text}"\n${stdout}\n${stderr}`));
          }
        }
        listeners.add(check);
        check();
      });
    },
  };
}

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "troupe-dev-test-"));
  dirs.push(dir);
  return dir;
}

/** The pids in the dev command's process table (`│ worker-1 │ 1234 │ worker │ …`). */
function tablePids(stdout: string): Map<string, number> {
  const pids = new Map<string, number>();
  for (const m of stdout.matchAll(/│ (nats-server|coordinator|worker-\d+)\s+│ (\d+)\s+│/g)) {
    pids.set(m[1]!, Number(m[2]));
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

beforeAll(() => {
  if (built.every((f) => existsSync(f))) return;
  execFileSync("npx", ["turbo", "run", "build", "--output-logs=errors-only"], {
    cwd: root,
    stdio: "inherit",
    timeout: 300_000,
  });
}, 320_000);

afterAll(() => {
  for (const child of spawned) if (child.exitCode === null) child.kill("SIGKILL");
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(natsMissing !== undefined)(`troupe dev ${natsMissing ?? ""}`, () => {
  it("--once brings the cluster up, runs the demo, and brings it down cleanly", async () => {
    const dir = dataDir();
    const started = Date.now();
    const run = troupe(["dev", "--once", "--port", "0", "--data-dir", dir]);
    const r = await run.finished;
    const elapsed = Date.now() - started;
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const pids = tablePids(r.stdout);
    expect([...pids.keys()].sort()).toEqual(["coordinator", "nats-server", "worker-1", "worker-2"]);
    // both workers got shards: "32 (0-31)"-style cells in the table
    expect(r.stdout).toMatch(/│ worker-1\s+│ \d+\s+│ worker\s+│ \d+ \(/);
    expect(r.stdout).toMatch(/│ worker-2\s+│ \d+\s+│ worker\s+│ \d+ \(/);
    expect(r.stdout).toContain('Plan for "start a weekly engineering newsletter":');
    expect(r.stdout).toMatch(/1\. \[research\] it needs an owner/);
    expect(r.stdout).toContain("troupe status");
    expect(r.stderr).toMatch(/stopped worker-1 \(pid \d+\), worker-2 \(pid \d+\), coordinator/);
    for (const [name, pid] of pids) expect(alive(pid), `${name} (pid ${pid})`).toBe(false);
    expect(existsSync(join(dir, "state.json"))).toBe(false);
    expect(existsSync(join(dir, "logs", "worker-1.log"))).toBe(true);
    console.log(`troupe dev --once: ${elapsed} ms`);
  }, 120_000);

  it("Ctrl-C stops workers, coordinator and nats-server, and exits 0", async () => {
    const dir = dataDir();
    const run = troupe(["dev", "--port", "0", "--data-dir", dir, "ship", "the", "beta"]);
    await run.waitFor("Press Ctrl-C", 90_000);
    const { stdout } = run.output();
    expect(stdout).toContain('Plan for "ship the beta":');
    const pids = tablePids(stdout);
    expect(pids.size).toBe(4);
    for (const [name, pid] of pids) expect(alive(pid), name).toBe(true);
    const interrupted = Date.now();
    run.child.kill("SIGINT");
    const r = await run.finished;
    const stopMs = Date.now() - interrupted;
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(stopMs).toBeLessThan(20_000);
    expect(r.stderr).toContain("SIGINT: stopping the dev cluster");
    for (const [name, pid] of pids) expect(alive(pid), `${name} (pid ${pid})`).toBe(false);
    console.log(`troupe dev: stopped ${stopMs} ms after SIGINT`);
  }, 120_000);

  it("a second troupe dev on the same data dir refuses to start", async () => {
    const dir = dataDir();
    const first = troupe(["dev", "--no-demo", "--port", "0", "--data-dir", dir]);
    await first.waitFor("Press Ctrl-C", 90_000);
    const second = await troupe(["dev", "--once", "--port", "0", "--data-dir", dir]).finished;
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(
      /another troupe dev \(pid \d+, NATS nats:\/\/127\.0\.0\.1:\d+\) uses/,
    );
    first.child.kill("SIGTERM");
    expect((await first.finished).code).toBe(0);
  }, 120_000);

  it("processes left by a troupe dev that was killed outright are stopped by the next one", async () => {
    const dir = dataDir();
    const first = troupe(["dev", "--no-demo", "--port", "0", "--data-dir", dir]);
    await first.waitFor("Press Ctrl-C", 90_000);
    const orphans = tablePids(first.output().stdout);
    expect(orphans.size).toBe(4);
    first.child.kill("SIGKILL"); // no chance to stop its children
    await first.finished;
    const second = await troupe(["dev", "--once", "--no-demo", "--port", "0", "--data-dir", dir])
      .finished;
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toMatch(/stopped processes an earlier troupe dev left running: worker-1/);
    for (const [name, pid] of orphans) expect(alive(pid), `${name} (pid ${pid})`).toBe(false);
  }, 120_000);
});

describe("troupe dev without nats-server", () => {
  it("says so and runs the embedded demo", async () => {
    const r = await troupe(["dev", "--once"], {
      TROUPE_NATS_SERVER: join(tmpdir(), "no-such-dir", "nats-server"),
    }).finished;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(
      "nats-server not found (run bash scripts/setup.sh); running the embedded runtime instead",
    );
    expect(r.stdout).toContain("Runtime: embedded");
    expect(r.stdout).toContain('Plan for "start a weekly engineering newsletter":');
  }, 60_000);
});
