/**
 * Health, readiness and metrics of the built worker and coordinator processes: /healthz
 * answers from the start; /readyz is 503 (with its reason) while NATS is unreachable, before
 * the worker has shards and while draining, 200 otherwise; /metrics counts the messages a
 * client sends; SIGTERM drains and exits 0.
 */
import { join } from "node:path";
import { connect, type TroupeClient } from "@troupe/nats";
import { type NatsServerHandle, startNatsServer } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildApps,
  COORDINATOR_MAIN,
  type Proc,
  printLogsIfAsked,
  repo,
  spawnNode,
  stopProc,
  teardown,
  WORKER_MAIN,
  waitFor,
} from "./procs.js";

const FIXTURE = join(repo, "apps/worker/test/fixtures/ordered-counter.mjs");
const NAMESPACE = "probes";
const SHARDS = 8;
const AGENTS = 5;
const INCREMENTS = 10;

let server: NatsServerHandle;
let client: TroupeClient | undefined;

/** The port a process logged for its probes (`--http-port 0`). */
function probePort(p: Proc): number | undefined {
  for (const line of p.logs) {
    if (!line.includes("httpPort")) continue;
    try {
      const port = (JSON.parse(line) as { httpPort?: unknown }).httpPort;
      if (typeof port === "number") return port;
    } catch {
      // not a JSON log line
    }
  }
  return undefined;
}

interface Probe {
  status: number;
  body: string;
}

async function get(port: number, path: string): Promise<Probe | undefined> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5000) });
    return { status: r.status, body: await r.text() };
  } catch {
    return undefined; // not listening (yet, or any more)
  }
}

/** /readyz: the HTTP status and the reason it gave, or undefined when nothing listens. */
const readyz = async (port: number) => {
  const r = await get(port, "/readyz");
  if (r === undefined) return undefined;
  const body = JSON.parse(r.body) as { reason?: string };
  return { http: r.status, reason: body.reason };
};

/**
 * The value of one series in Prometheus text: `series` as `name{a="x",b="y"}`, its labels in
 * any order.
 */
function sample(text: string, series: string): number | undefined {
  const parse = (s: string) => {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?$/.exec(s);
    const labels = [...(m?.[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)]
      .map((l) => `${l[1]}=${l[2]}`)
      .sort()
      .join(",");
    return `${m?.[1]}{${labels}}`;
  };
  const wanted = parse(series);
  for (const line of text.split("\n")) {
    const at = line.lastIndexOf(" ");
    if (at > 0 && !line.startsWith("#") && parse(line.slice(0, at)) === wanted) {
      return Number(line.slice(at + 1));
    }
  }
  return undefined;
}

beforeAll(async () => {
  await buildApps();
  server = await startNatsServer();
}, 300_000);

afterAll(async () => {
  printLogsIfAsked();
  await client?.close().catch(() => {});
  await teardown(server);
}, 60_000);

describe("worker and coordinator probes", () => {
  it("serve /healthz, /readyz and /metrics through start, traffic, a NATS outage and a drain", async () => {
    // NATS down: the worker waits for it, alive but not ready
    await server.stop();
    const worker = spawnNode("w1", WORKER_MAIN, [
      ...["--nats", server.url, "--namespace", NAMESPACE, "--agents", FIXTURE, "--id", "w1"],
      ...["--http-port", "0"],
    ]);
    const wPort = await waitFor("the worker's probe port", () => probePort(worker));
    expect((await get(wPort, "/healthz"))?.status).toBe(200);
    expect(await readyz(wPort)).toMatchObject({ http: 503, reason: "starting" });

    // NATS up, no coordinator yet: the namespace does not exist, still not ready
    await server.restart();
    await waitFor("the worker to wait for the namespace", () =>
      worker.logs.some((l) => l.includes("does not exist yet")),
    );
    expect(await readyz(wPort)).toMatchObject({ http: 503, reason: "starting" });

    const coordinator = spawnNode("c1", COORDINATOR_MAIN, [
      ...["--nats", server.url, "--namespace", NAMESPACE, "--shards", String(SHARDS)],
      ...["--id", "c1", "--http-port", "0"],
    ]);
    const cPort = await waitFor("the coordinator's probe port", () => probePort(coordinator));
    expect((await get(cPort, "/healthz"))?.status).toBe(200);
    await waitFor("the coordinator to be ready", async () => (await readyz(cPort))?.http === 200);
    await waitFor("the worker to be ready", async () => (await readyz(wPort))?.http === 200);

    // traffic: every increment is processed, and counted
    client = await connect({ servers: server.url, namespace: NAMESPACE });
    for (let i = 1; i <= INCREMENTS; i++) {
      await Promise.all(
        Array.from({ length: AGENTS }, (_, a) =>
          client!.ref("ordered-counter", `a${a}`).send({ type: "inc", sender: "t", seq: i }),
        ),
      );
    }
    for (let a = 0; a < AGENTS; a++) {
      const v = await client
        .ref("ordered-counter", `a${a}`)
        .request<{ count: number }>({ type: "get" }, { timeoutMs: 10_000 });
      expect(v.count).toBe(INCREMENTS);
    }
    const sent = AGENTS * (INCREMENTS + 1);
    const labels = `namespace="${NAMESPACE}",worker="w1"`;
    const wMetrics = (await get(wPort, "/metrics"))!;
    expect(wMetrics.status).toBe(200);
    expect(sample(wMetrics.body, `troupe_messages_processed_total{${labels}}`)).toBe(sent);
    expect(
      sample(
        wMetrics.body,
        `troupe_message_handling_seconds_count{${labels},agent_type="ordered-counter",outcome="ok"}`,
      ),
    ).toBe(sent);
    expect(sample(wMetrics.body, `troupe_shards_owned{${labels}}`)).toBe(SHARDS);
    expect(sample(wMetrics.body, `troupe_active_agents{${labels}}`)).toBe(AGENTS);
    expect(sample(wMetrics.body, `troupe_ready{${labels}}`)).toBe(1);
    expect(wMetrics.body).toMatch(/^nodejs_heap_size_used_bytes\{/m);

    const cLabels = `namespace="${NAMESPACE}",coordinator="c1"`;
    const cMetrics = (await get(cPort, "/metrics"))!;
    expect(cMetrics.status).toBe(200);
    expect(sample(cMetrics.body, `troupe_coordinator_leader{${cLabels}}`)).toBe(1);
    expect(sample(cMetrics.body, `troupe_shards_assigned{${cLabels}}`)).toBe(SHARDS);
    expect(sample(cMetrics.body, `troupe_shards_unassigned{${cLabels}}`)).toBe(0);
    expect(sample(cMetrics.body, `troupe_worker_shards{${cLabels},worker="w1"}`)).toBe(SHARDS);
    expect(sample(cMetrics.body, `troupe_quarantined_agents{${cLabels}}`)).toBe(0);

    // NATS outage: both stay alive and say they are not ready, then recover
    await server.stop();
    await waitFor("the worker to be not ready", async () => (await readyz(wPort))?.http === 503);
    await waitFor("the coordinator to be not ready", async () => {
      const r = await readyz(cPort);
      return r?.http === 503 && r.reason === "nats-disconnected";
    });
    expect((await get(wPort, "/healthz"))?.status).toBe(200);
    await server.restart();
    await waitFor("the coordinator to be ready again", async () => {
      return (await readyz(cPort))?.http === 200;
    });
    await waitFor("the worker to be ready again", async () => (await readyz(wPort))?.http === 200);

    // SIGTERM: not ready from the signal on (while it drains), then gone, exit 0
    const seen: number[] = [];
    worker.child.kill("SIGTERM");
    for (;;) {
      const r = await readyz(wPort);
      if (r === undefined) break;
      seen.push(r.http);
      await new Promise((res) => setTimeout(res, 10));
    }
    expect(await stopProc(worker)).toBe(0);
    // a probe the process answered before it handled the signal may still say 200; once it
    // said 503 it never says 200 again
    const from = seen.indexOf(503);
    expect(from < 0 ? [] : seen.slice(from).filter((s) => s !== 503)).toEqual([]);
    expect(worker.logs.some((l) => l.includes("signal received: draining"))).toBe(true);
    const n503 = seen.filter((s) => s === 503).length;
    console.log(`worker /readyz after SIGTERM: ${seen.length - n503} × 200, then ${n503} × 503`);
    expect(await stopProc(coordinator)).toBe(0);
    expect(await get(cPort, "/healthz")).toBeUndefined();
  }, 180_000);
});
