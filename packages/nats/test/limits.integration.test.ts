/** A server with a small max_payload (64 KiB): too-large messages are refused before sending. */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { cleanup, type NatsServer, setup } from "@troupe/testkit";
import { ErrorCode, encodeFrame, TroupeError } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect, createNatsBackend, type NatsBackend, namespaceNames } from "../src/index.js";
import { frame, freshNamespace } from "./helpers.js";

const MAX_PAYLOAD = 64 * 1024;
let ns: NatsServer;
let nc: NatsConnection;
let namespace: string;
let b: NatsBackend;

async function stored(): Promise<number> {
  const jsm = await jetstreamManager(nc);
  return (await jsm.streams.info(namespaceNames(namespace).inboxStream)).state.messages;
}

beforeAll(async () => {
  ({ ns, nc } = await setup({ maxPayload: MAX_PAYLOAD }));
  namespace = freshNamespace("lim");
  b = await createNatsBackend({ nc, namespace, shardCount: 2 });
});

afterAll(async () => {
  await cleanup(ns, nc);
});

describe("max_payload", () => {
  it("caps frames at the server's max_payload", () => {
    expect(b.maxPayload).toBe(MAX_PAYLOAD);
    expect(b.maxFrameBytes).toBe(MAX_PAYLOAD);
  });

  it("refuses a frame over max_payload with LIMIT_EXCEEDED, storing nothing", async () => {
    await b.append({ frame: frame("small") });
    const before = await stored();
    const big = frame("big", "counter/a", { type: "inc", blob: "x".repeat(70 * 1024) });
    const e = (await b.append({ frame: big }).catch((x: unknown) => x)) as TroupeError;
    expect(e).toBeInstanceOf(TroupeError);
    expect(e.code).toBe(ErrorCode.LIMIT_EXCEEDED);
    // a frame that fits maxFrameBytes but not with its headers
    const limits = { ...ecLimits(), maxFrameBytes: 1 << 20, maxStringBytes: 1 << 20 };
    const probe = encodeFrame(frame("edge", "counter/a", { type: "inc", blob: "" }), limits);
    const edge = frame("edge", "counter/a", {
      type: "inc",
      blob: "y".repeat(MAX_PAYLOAD - probe.length - 10),
    });
    const bytes = encodeFrame(edge, limits);
    expect(bytes.length).toBeLessThanOrEqual(MAX_PAYLOAD);
    expect(bytes.length).toBeGreaterThan(MAX_PAYLOAD - 20);
    const e2 = (await b
      .append({ bytes, envelope: edge.envelope })
      .catch((x: unknown) => x)) as TroupeError;
    expect(e2.code).toBe(ErrorCode.LIMIT_EXCEEDED);
    expect(e2.message).toContain("max_payload");
    expect(await stored()).toBe(before);
  });

  it("refuses it at send through a client runtime too", async () => {
    const client = await connect({ servers: ns.url, namespace });
    try {
      const before = await stored();
      await expect(
        client.ref("counter", "a").send({ type: "inc", blob: "z".repeat(80 * 1024) }),
      ).rejects.toMatchObject({ code: ErrorCode.LIMIT_EXCEEDED });
      expect(await stored()).toBe(before);
      expect((await client.ref("counter", "a").send({ type: "inc" })).sequence).toBeGreaterThan(0);
    } finally {
      await client.close();
    }
  });

  it("refuses a snapshot over max_payload as a permanent storage error", async () => {
    const e = (await b.snapshots
      .put(
        "counter/huge",
        { state: "s".repeat(70 * 1024), lastSequence: 1, outbox: [], sent: 0, updatedAt: 0 },
        0,
      )
      .catch((x: unknown) => x)) as TroupeError;
    expect(e.code).toBe(ErrorCode.STORAGE_ERROR);
    expect(e.retryAfterMs).toBeUndefined();
    expect(e.details?.conflict).toBeUndefined();
  });
});

function ecLimits() {
  return { maxDepth: 32, maxCollectionLength: 65_536, maxTotalItems: 262_144 };
}
