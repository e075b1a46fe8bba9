/**
 * SIGTERM during start-up, with the built processes: a worker waiting for a namespace no
 * coordinator has created, and a worker or coordinator waiting for a NATS server that is not
 * there, stop waiting and exit 0 at once (a pod must not hang until its grace period ends).
 */
import { join } from "node:path";
import {
  freePorts,
  type NatsServerHandle,
  natsServerMissing,
  startNatsServer,
} from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildApps,
  COORDINATOR_MAIN,
  logTail,
  type Proc,
  printLogsIfAsked,
  repo,
  spawnNode,
  spawnWorker,
  stopAll,
  waitFor,
} from "./procs.js";

const FIXTURE = join(repo, "apps/worker/test/fixtures/ordered-counter.mjs");
const STOPPED_EARLY = "stopped before start-up finished";

const natsMissing = natsServerMissing();

/** The messages of a process's JSON log lines. */
function messages(p: Proc): string[] {
  return p.logs.flatMap((line) => {
    try {
      const msg = (JSON.parse(line) as { msg?: unknown }).msg;
      return typeof msg === "string" ? [msg] : [];
    } catch {
      return []; // not a JSON log line
    }
  });
}

const said = (p: Proc, text: string) => messages(p).some((m) => m.includes(text));

/**
 * Waits until `p` logs `waiting`, sends SIGTERM and expects a clean exit (0) that says it
 * stopped before start-up finished. No bound but the test's timeout: the old code never exited.
 */
async function terminateWhileWaiting(p: Proc, waiting: string): Promise<void> {
  try {
    await waitFor(`${p.name} to say "${waiting}"`, () => said(p, waiting));
    p.child.kill("SIGTERM");
    expect(await p.exited).toBe(0);
    expect(said(p, "signal received")).toBe(true);
    expect(said(p, STOPPED_EARLY)).toBe(true);
    expect(said(p, "could not start")).toBe(false);
  } catch (e) {
    console.log(logTail(p));
    throw e;
  }
}

/** A NATS URL nothing listens on (a port that was free a moment ago). */
async function deadNatsUrl(): Promise<string> {
  const [port] = await freePorts(1);
  return `nats://127.0.0.1:${port}`;
}

beforeAll(async () => {
  await buildApps();
}, 300_000);

afterAll(async () => {
  printLogsIfAsked();
  await stopAll();
}, 60_000);

describe("SIGTERM while waiting for NATS", () => {
  it("a worker stops waiting and exits 0", async () => {
    const at = { servers: await deadNatsUrl(), namespace: "nowhere" };
    const worker = spawnWorker(at, { id: "worker-no-nats", agents: [FIXTURE] });
    await terminateWhileWaiting(worker, "waiting for NATS at");
  });

  it("a coordinator stops waiting and exits 0", async () => {
    const url = await deadNatsUrl();
    const coordinator = spawnNode("coordinator-no-nats", COORDINATOR_MAIN, [
      "--nats",
      url,
      "--namespace",
      "nowhere",
    ]);
    await terminateWhileWaiting(coordinator, "waiting for NATS at");
  });
});

describe.skipIf(natsMissing !== undefined)(
  `SIGTERM while waiting for the namespace ${natsMissing ?? ""}`,
  () => {
    let server: NatsServerHandle | undefined;

    beforeAll(async () => {
      server = await startNatsServer();
    });

    afterAll(async () => {
      await server?.cleanup();
    });

    it("a worker whose namespace no coordinator created stops waiting and exits 0", async () => {
      const at = { servers: server!.url, namespace: "never-created" };
      const worker = spawnWorker(at, { id: "worker-no-ns", agents: [FIXTURE] });
      await terminateWhileWaiting(worker, 'namespace "never-created" does not exist yet');
    });
  },
);
