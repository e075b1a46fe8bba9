import { createServer } from "node:net";
import { isTroupeError } from "@troupe/wire";
import { afterEach, describe, expect, it } from "vitest";
import { type Readiness, startProbeServer, watchConnection } from "../src/index.js";

const quiet = { info() {}, warn() {}, error() {} };
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

async function serve(readiness: () => Readiness, metrics?: () => Promise<string>) {
  const server = await startProbeServer({
    port: 0,
    host: "127.0.0.1",
    readiness,
    ...(metrics === undefined
      ? {}
      : {
          metrics: async () => ({
            contentType: "text/plain; version=0.0.4",
            body: await metrics(),
          }),
        }),
    logger: quiet,
  });
  closers.push(() => server.close());
  return { server, url: (path: string) => `http://127.0.0.1:${server.port}${path}` };
}

describe("probe server", () => {
  it("answers /healthz, /readyz (503 with the reason, then 200) and /metrics", async () => {
    let state: Readiness = { ready: false, reason: "starting", message: "connecting" };
    const { server, url } = await serve(
      () => state,
      async () => "troupe_up 1\n",
    );
    expect(server.port).toBeGreaterThan(0);

    const health = await fetch(url("/healthz"));
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: "ok" });

    const notReady = await fetch(url("/readyz"));
    expect(notReady.status).toBe(503);
    expect(notReady.headers.get("content-type")).toMatch(/application\/json/);
    expect(await notReady.json()).toEqual({
      status: "not ready",
      reason: "starting",
      message: "connecting",
    });

    state = { ready: true, details: { shards: 4 } };
    const ready = await fetch(url("/readyz"));
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: "ready", details: { shards: 4 } });

    const metrics = await fetch(url("/metrics"));
    expect(metrics.status).toBe(200);
    expect(metrics.headers.get("content-type")).toBe("text/plain; version=0.0.4");
    expect(await metrics.text()).toBe("troupe_up 1\n");

    const head = await fetch(url("/healthz"), { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe("");
  });

  it("answers 404 for other paths and for /metrics without a renderer, 405 for other methods", async () => {
    const { url } = await serve(() => ({ ready: true }));
    expect((await fetch(url("/nope"))).status).toBe(404);
    expect((await fetch(url("/metrics"))).status).toBe(404);
    const post = await fetch(url("/readyz"), { method: "POST" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
  });

  it("answers 500 when rendering the metrics fails, and keeps serving", async () => {
    const { url } = await serve(
      () => ({ ready: true }),
      async () => {
        throw new Error("registry broke");
      },
    );
    expect((await fetch(url("/metrics"))).status).toBe(500);
    expect((await fetch(url("/healthz"))).status).toBe(200);
  });

  it("refuses a port in use with CONFIG_ERROR", async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    closers.push(() => new Promise<void>((r) => blocker.close(() => r())));
    const port = (blocker.address() as { port: number }).port;
    const err = await startProbeServer({
      port,
      host: "127.0.0.1",
      readiness: () => ({ ready: true }),
      logger: quiet,
    }).catch((e: unknown) => e);
    expect(isTroupeError(err) && err.code).toBe("CONFIG_ERROR");
    await expect(
      startProbeServer({ port: 70_000, readiness: () => ({ ready: true }), logger: quiet }),
    ).rejects.toSatisfy((e) => isTroupeError(e) && e.code === "CONFIG_ERROR");
  });

  it("close() stops serving, also with a keep-alive connection open", async () => {
    const { server, url } = await serve(() => ({ ready: true }));
    expect((await fetch(url("/healthz"))).status).toBe(200); // fetch keeps the socket alive
    await server.close();
    await expect(fetch(url("/healthz"))).rejects.toThrow();
  });
});

describe("watchConnection", () => {
  it("follows disconnect, reconnect and close", async () => {
    const events: Array<{ type: string }> = [];
    let push: (() => void) | undefined;
    let closed = false;
    const nc = {
      isClosed: () => closed,
      status: () => ({
        async *[Symbol.asyncIterator]() {
          for (;;) {
            while (events.length > 0) {
              const e = events.shift()!;
              yield e;
              if (e.type === "close") return;
            }
            await new Promise<void>((r) => {
              push = r;
            });
          }
        },
      }),
    };
    const state = watchConnection(nc);
    const emit = async (type: string) => {
      events.push({ type });
      push?.();
      await new Promise((r) => setTimeout(r, 0));
    };
    expect(state.connected()).toBe(true);
    await emit("disconnect");
    expect(state.connected()).toBe(false);
    await emit("reconnecting");
    expect(state.connected()).toBe(false);
    await emit("reconnect");
    expect(state.connected()).toBe(true);
    closed = true;
    await emit("close");
    expect(state.connected()).toBe(false);
  });
});
