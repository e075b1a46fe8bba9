/** The smoke test on a 3-node JetStream cluster, every stream and bucket with 3 replicas. */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { type NatsClusterHandle, startNatsCluster } from "@troupe/testkit";
import { ErrorCode, type TroupeError } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  connectNats,
  createNatsBackend,
  ensureNamespace,
  type NatsBackend,
  namespaceNames,
  shardOfAddress,
} from "../src/index.js";
import { collector, frame, freshNamespace, waitFor } from "./helpers.js";

const SHARDS = 2;
let cluster: NatsClusterHandle;
let nc: NatsConnection;
let b: NatsBackend;
let namespace: string;
let ensureMs = 0;

beforeAll(async () => {
  cluster = await startNatsCluster({ nodes: 3 });
  nc = await connectNats(cluster.urls);
  namespace = freshNamespace("r3");
  const t = performance.now();
  const info = await ensureNamespace(nc, { namespace, shardCount: SHARDS, replicas: 3 });
  ensureMs = performance.now() - t;
  b = await createNatsBackend({ nc, namespaceInfo: info });
}, 60_000);

afterAll(async () => {
  await b?.close();
  await nc?.close();
  await cluster?.cleanup();
});

describe("on a 3-node cluster (R3)", () => {
  it("creates the namespace with 3 replicas", async () => {
    const jsm = await jetstreamManager(nc);
    const names = namespaceNames(namespace);
    expect((await jsm.streams.info(names.inboxStream)).config.num_replicas).toBe(3);
    expect((await jsm.streams.info(names.parkedStream)).config.num_replicas).toBe(3);
    expect((await jsm.streams.info(`KV_${names.snapshotsBucket}`)).config.num_replicas).toBe(3);
    const c = await jsm.consumers.info(names.inboxStream, names.shardConsumer(1));
    expect(c.cluster?.replicas?.length).toBe(2);
    console.log(`ensureNamespace (R3, ${SHARDS} shards): ${ensureMs.toFixed(0)} ms`);
  });

  it("appends, deduplicates, delivers in order and takes acks", async () => {
    const c = collector();
    await b.open("me", c.handlers);
    await b.ownShards([shardOfAddress("counter/a", SHARDS)]);
    const t = performance.now();
    for (let i = 0; i < 20; i++) await b.append({ frame: frame(`c${i}`) });
    const perAppend = (performance.now() - t) / 20;
    expect((await b.append({ frame: frame("c0") })).duplicate).toBe(true);
    await waitFor("20 deliveries", () => c.got.length === 20);
    expect(c.got.map((d) => d.sequence)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    for (const d of c.got) d.ack();
    const jsm = await jetstreamManager(nc);
    const names = namespaceNames(namespace);
    await waitFor("acks", async () => {
      const info = await jsm.consumers.info(
        names.inboxStream,
        names.shardConsumer(shardOfAddress("counter/a", SHARDS)),
      );
      return info.num_ack_pending === 0 && info.ack_floor.stream_seq === 20;
    });
    console.log(`R3 append → PubAck, sequential: ${perAppend.toFixed(2)} ms each`);
  });

  it("compare-and-sets snapshots", async () => {
    const record = { state: { n: 1 }, lastSequence: 1, outbox: [], sent: 0, updatedAt: 0 };
    const r1 = await b.snapshots.put("counter/a", record, 0);
    const e = (await b.snapshots
      .put("counter/a", record, 0)
      .catch((x: unknown) => x)) as TroupeError;
    expect(e.code).toBe(ErrorCode.STORAGE_ERROR);
    expect(e.details?.conflict).toBe(true);
    const r2 = await b.snapshots.put("counter/a", { ...record, state: { n: 2 } }, r1);
    expect(await b.snapshots.get("counter/a")).toMatchObject({
      revision: r2,
      record: { state: { n: 2 } },
    });
  });
});
