import { existsSync } from "node:fs";
import { AckPolicy, jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { describe, expect, it } from "vitest";
import {
  cleanup,
  containerSkipReason,
  findNatsServer,
  isNatsServerStartFailed,
  natsServerVersion,
  pinnedNatsServerVersion,
  setup,
  startNatsContainer,
  startNatsServer,
} from "../src/index.js";

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("nats-server binary", () => {
  it("reports its version, normally the one pinned in scripts/versions.env", async () => {
    const binary = findNatsServer();
    const version = await natsServerVersion(binary);
    const pinned = pinnedNatsServerVersion();
    console.log(`nats-server ${version} at ${binary} (pinned: ${pinned})`);
    expect(version).toMatch(/^\d+\.\d+\.\d+/);
    // setup.sh falls back to the distribution package when Go is missing; that is a
    // warning there, not a test failure here.
    if (version !== pinned) console.warn(`nats-server ${version} is not the pinned ${pinned}`);
  });

  it("refuses a TROUPE_NATS_SERVER that is not an executable", () => {
    const saved = process.env.TROUPE_NATS_SERVER;
    process.env.TROUPE_NATS_SERVER = "/nonexistent/nats-server";
    try {
      expect(() => findNatsServer()).toThrow(
        expect.objectContaining({ code: "NATS_SERVER_NOT_FOUND" }),
      );
    } finally {
      if (saved === undefined) delete process.env.TROUPE_NATS_SERVER;
      else process.env.TROUPE_NATS_SERVER = saved;
    }
  });
});

describe("startNatsServer", () => {
  it("serves core NATS and JetStream, and cleanup leaves no process or data", async () => {
    const t0 = performance.now();
    const { ns, nc } = await setup();
    console.log(`single node ready in ${(performance.now() - t0).toFixed(0)} ms`);
    expect(ns.kind).toBe("process");
    if (ns.kind !== "process") return;
    expect(ns.url).toBe(`nats://127.0.0.1:${ns.port}`);
    expect(ns.monitorUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

    // core publish/subscribe round trip
    const sub = nc.subscribe("greet.>", { max: 1 });
    nc.publish("greet.troupe", "hello");
    for await (const m of sub) expect(m.string()).toBe("hello");

    // JetStream: stream, publish with dedup id, durable consumer, ack
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: "T", subjects: ["t.>"], storage: StorageType.File });
    const js = jetstream(nc);
    const a = await js.publish("t.1", "one", { msgID: "m-1" });
    const dup = await js.publish("t.1", "one", { msgID: "m-1" });
    await js.publish("t.2", "two");
    expect(a.seq).toBe(1);
    expect(dup.duplicate).toBe(true);
    await jsm.consumers.add("T", { durable_name: "c", ack_policy: AckPolicy.Explicit });
    const consumer = await js.consumers.get("T", "c");
    const got: string[] = [];
    for await (const m of await consumer.fetch({ max_messages: 2, expires: 2000 })) {
      got.push(m.string());
      m.ack();
    }
    expect(got).toEqual(["one", "two"]);

    const { pid, dataDir } = ns;
    expect(isAlive(pid)).toBe(true);
    await cleanup(ns, nc);
    await cleanup(ns, nc); // idempotent
    expect(isAlive(pid)).toBe(false);
    expect(existsSync(dataDir)).toBe(false);
  });

  it("keeps JetStream file storage across stop/restart on the same ports", async () => {
    const ns = await startNatsServer();
    try {
      const nc = await connect({ servers: ns.url });
      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: "KEEP", subjects: ["keep.>"], storage: StorageType.File });
      const js = jetstream(nc);
      for (let i = 0; i < 10; i++) await js.publish(`keep.${i}`, `m${i}`);
      await nc.close();

      const { port, pid } = ns;
      await ns.stop();
      await ns.stop(); // idempotent
      expect(ns.running).toBe(false);
      expect(isAlive(pid)).toBe(false);
      const t0 = performance.now();
      await ns.restart();
      console.log(`single node restart ready in ${(performance.now() - t0).toFixed(0)} ms`);
      expect(ns.port).toBe(port);
      expect(ns.pid).not.toBe(pid);

      const nc2 = await connect({ servers: ns.url });
      const info = await (await jetstreamManager(nc2)).streams.info("KEEP");
      expect(info.state.messages).toBe(10);
      const ordered = await jetstream(nc2).consumers.get("KEEP");
      const first = await ordered.next({ expires: 2000 });
      expect(first?.string()).toBe("m0");
      await nc2.close();

      // restart after a SIGKILL works too
      await ns.kill();
      expect(ns.running).toBe(false);
      await ns.restart();
      expect(ns.running).toBe(true);
    } finally {
      await ns.cleanup();
    }
    expect(existsSync(ns.dataDir)).toBe(false);
    await expect(ns.restart()).rejects.toMatchObject({ code: "HANDLE_CLOSED" });
  });

  it("starts without monitoring or JetStream and honours max_payload", async () => {
    const { ns, nc } = await setup({ monitor: false, jetstream: false, maxPayload: 4096 });
    try {
      expect(ns.monitorUrl).toBeUndefined();
      expect(nc.info?.max_payload).toBe(4096);
      expect(nc.info?.jetstream ?? false).toBe(false);
    } finally {
      await cleanup(ns, nc);
    }
  });

  it("reports a server that cannot start with its log tail", async () => {
    const error = await startNatsServer({ config: "this is { not valid" }).catch((e) => e);
    expect(isNatsServerStartFailed(error)).toBe(true);
    expect(error.message).toMatch(/exited with code 1 while starting; log tail:\n.+/s);
  });
});

const skipContainers = await containerSkipReason();
if (skipContainers !== undefined) console.log(`skipping container tests: ${skipContainers}`);

describe("startNatsContainer", () => {
  it.skipIf(skipContainers !== undefined)(
    `runs nats-server in a container${skipContainers === undefined ? "" : ` (skipped: ${skipContainers})`}`,
    async () => {
      const ns = await startNatsContainer();
      try {
        const nc = await connect({ servers: ns.url });
        const jsm = await jetstreamManager(nc);
        await jsm.streams.add({ name: "C", subjects: ["c.>"] });
        await jetstream(nc).publish("c.1", "x");
        expect((await jsm.streams.info("C")).state.messages).toBe(1);
        await nc.close();
      } finally {
        await ns.cleanup();
      }
    },
    180_000,
  );
});
