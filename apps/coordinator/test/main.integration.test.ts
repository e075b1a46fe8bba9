/**
 * The built troupe-coordinator process and its --inbox-max-age (TROUPE_INBOX_MAX_AGE): the
 * inbox it creates keeps messages that long, a later coordinator with another age changes
 * it, and a bad value stops the process with the configuration exit code (2).
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { namespaceNames } from "@troupe/nats";
import { type NatsServerHandle, startNatsServer } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const MAIN = join(repo, "apps/coordinator/dist/main.js");
const HOUR_NS = 3600 * 1e9;

interface Coordinator {
  child: ChildProcess;
  /** Exit code (or the signal's name) once it has exited. */
  exited: Promise<number | string>;
  /** stdout and stderr, as they came. */
  output(): string;
  /** The messages of its JSON log lines. */
  messages(): string[];
}

const started: Coordinator[] = [];

function coordinator(args: string[], env: Record<string, string> = {}): Coordinator {
  const child = spawn(process.execPath, [MAIN, "--http-port", "0", ...args], {
    cwd: repo,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, TROUPE_LOG_LEVEL: "info", ...env },
  });
  let out = "";
  child.stdout?.on("data", (b: Buffer) => {
    out += b.toString("utf8");
  });
  child.stderr?.on("data", (b: Buffer) => {
    out += b.toString("utf8");
  });
  const exited = new Promise<number | string>((r) =>
    child.on("exit", (code, signal) => r(code ?? signal ?? "unknown")),
  );
  const c: Coordinator = {
    child,
    exited,
    output: () => out,
    messages: () =>
      out.split("\n").flatMap((line) => {
        try {
          const msg = (JSON.parse(line) as { msg?: unknown }).msg;
          return typeof msg === "string" ? [msg] : [];
        } catch {
          return [];
        }
      }),
  };
  started.push(c);
  return c;
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function stop(c: Coordinator): Promise<number | string> {
  c.child.kill("SIGTERM");
  return c.exited;
}

let server: NatsServerHandle;
let nc: NatsConnection;

beforeAll(async () => {
  // the process runs the built code: build it (a turbo cache hit when nothing changed)
  await promisify(execFile)(
    "npx",
    ["turbo", "run", "build", "--filter=@troupe/coordinator-service", "--output-logs=errors-only"],
    { cwd: repo, timeout: 240_000, maxBuffer: 16 * 1024 * 1024 },
  );
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
}, 300_000);

afterAll(async () => {
  for (const c of started) {
    if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill("SIGKILL");
  }
  await nc?.close();
  await server?.cleanup();
});

describe("troupe-coordinator --inbox-max-age", () => {
  it("creates the inbox with that max_age; a later coordinator (env) changes it", async () => {
    const namespace = "retention";
    const inbox = namespaceNames(namespace).inboxStream;
    const jsm = await jetstreamManager(nc);
    const maxAge = () =>
      jsm.streams.info(inbox).then(
        (i) => i.config.max_age,
        () => undefined,
      );

    const first = coordinator([
      "--nats",
      server.url,
      "--namespace",
      namespace,
      "--inbox-max-age",
      "2h",
    ]);
    try {
      await waitFor("the coordinator to start", () =>
        first.messages().includes("coordinator service started"),
      );
      expect(await maxAge()).toBe(2 * HOUR_NS);
      expect(await stop(first)).toBe(0);

      const second = coordinator(["--nats", server.url, "--namespace", namespace], {
        TROUPE_INBOX_MAX_AGE: "12h",
      });
      await waitFor("the second coordinator to start", () =>
        second.messages().includes("coordinator service started"),
      );
      expect(await maxAge()).toBe(12 * HOUR_NS);
      expect(second.messages()).toContain("inbox max_age changed from 2h to 12h");
      expect(await stop(second)).toBe(0);
    } catch (e) {
      for (const c of started) console.log(c.output().slice(-4000));
      throw e;
    }
  });

  it("exits 2 on a bad value, saying what is wanted, from the flag or the env", async () => {
    const flag = coordinator(["--nats", server.url, "--inbox-max-age", "30s"]);
    expect(await flag.exited).toBe(2);
    expect(flag.output()).toContain(
      "error: option '--inbox-max-age <duration>' argument '30s' is invalid. must be at least 2m",
    );
    const env = coordinator(["--nats", server.url], { TROUPE_INBOX_MAX_AGE: "a week" });
    expect(await env.exited).toBe(2);
    expect(env.output()).toContain(
      "value 'a week' from env 'TROUPE_INBOX_MAX_AGE' is invalid. must be a duration",
    );
  });
});
