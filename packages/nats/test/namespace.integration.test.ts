/**
 * Names, tokens and server checks (pure), and ensureNamespace on a real server: idempotent,
 * concurrent, refusing a conflicting shard count; connectNats waiting for a server.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { type NatsConnection, connect as natsConnect } from "@nats-io/transport-node";
import type { Logger } from "@troupe/runtime";
import { cleanup, type NatsServer, setup, startNatsServer } from "@troupe/testkit";
import { agentId, ErrorCode, fromHex, shardOf, TroupeError, toHex } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  addressFromToken,
  checkServer,
  connectNats,
  ensureNamespace,
  isNamespaceMissing,
  namespaceNames,
  openNamespace,
  requireServerFeature,
  serverHas,
  shardOfAddress,
  subjectToken,
} from "../src/index.js";
import { parseServerVersion } from "../src/internal.js";
import { freshNamespace, waitFor } from "./helpers.js";

function fakeInfo(over: Record<string, unknown> = {}) {
  return { version: "2.10.0", jetstream: true, headers: true, max_payload: 1024 * 1024, ...over };
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return (e as TroupeError).code;
  }
}

/** A logger that keeps the messages of its info lines in `said`. */
function infoLines(said: string[]): Logger {
  return {
    info: (_o: unknown, msg?: string) => said.push(msg ?? ""),
    warn: () => {},
    error: () => {},
    debug: () => {},
  } as unknown as Logger;
}

describe("server checks (pure)", () => {
  it("wants nats-server 2.10.0 or newer, naming what it found", () => {
    expect(checkServer(fakeInfo()).maxFrameBytes).toBe(1024 * 1024);
    expect(checkServer(fakeInfo({ version: "2.15.2", max_payload: 64 * 1024 }))).toEqual({
      version: "2.15.2",
      maxPayload: 65536,
      maxFrameBytes: 65536,
    });
    expect(checkServer(fakeInfo({ max_payload: 8 * 1024 * 1024 })).maxFrameBytes).toBe(1048576);
    let err: TroupeError | undefined;
    try {
      checkServer(fakeInfo({ version: "2.9.25" }));
    } catch (e) {
      err = e as TroupeError;
    }
    expect(err?.code).toBe(ErrorCode.CONFIG_ERROR);
    expect(err?.message).toContain("2.9.25");
    expect(err?.message).toContain("2.10.0");
    expect(codeOf(() => checkServer(fakeInfo({ version: "garbage" })))).toBe(
      ErrorCode.CONFIG_ERROR,
    );
  });

  it("wants JetStream, and says how to turn it on", () => {
    let err: TroupeError | undefined;
    try {
      checkServer(fakeInfo({ jetstream: false }));
    } catch (e) {
      err = e as TroupeError;
    }
    expect(err?.code).toBe(ErrorCode.CONFIG_ERROR);
    expect(err?.message).toMatch(/JetStream is not enabled.*-js/);
    expect(codeOf(() => checkServer(fakeInfo({ jetstream: undefined })))).toBe(
      ErrorCode.CONFIG_ERROR,
    );
    expect(codeOf(() => checkServer(undefined))).toBe(ErrorCode.TRANSPORT_ERROR);
  });

  it("refuses features newer than the server instead of letting it ignore them", () => {
    expect(() =>
      requireServerFeature({ version: "2.11.0" }, "per-message TTL", "2.11.0"),
    ).not.toThrow();
    let err: TroupeError | undefined;
    try {
      requireServerFeature({ version: "2.10.24" }, "per-message TTL", "2.11.0");
    } catch (e) {
      err = e as TroupeError;
    }
    expect(err?.code).toBe(ErrorCode.CONFIG_ERROR);
    expect(err?.message).toBe(
      "per-message TTL needs nats-server 2.11.0 or newer; the server is 2.10.24",
    );
    expect(serverHas({ version: "v2.14.0-RC.1" }, "2.14.0")).toBe(true);
    expect(serverHas({ version: "2.13.9" }, "2.14.0")).toBe(false);
    expect(parseServerVersion("2.10.7-beta")).toEqual({ major: 2, minor: 10, patch: 7 });
    expect(parseServerVersion("two")).toBeUndefined();
  });
});

describe("names and tokens (pure)", () => {
  it("names every object as docs/cluster.md does", () => {
    const n = namespaceNames("prod-eu");
    expect(n.inboxStream).toBe("TROUPE_PROD_EU_INBOX");
    expect(n.parkedStream).toBe("TROUPE_PROD_EU_PARKED");
    expect(n.inboxSubject(7, "abc")).toBe("troupe.prod-eu.in.7.abc");
    expect(n.shardFilter(7)).toBe("troupe.prod-eu.in.7.>");
    expect(n.shardConsumer(7)).toBe("shard-7");
    expect(n.parkedSubject("abc")).toBe("troupe.prod-eu.parked.abc");
    expect(n.clientSubject("c1")).toBe("troupe.prod-eu.client.c1");
    expect(n.controlSubject("status")).toBe("troupe.prod-eu.ctl.status");
    expect(n.workerControlSubject("w1", "status")).toBe("troupe.prod-eu.ctl.worker.w1.status");
    expect(n.snapshotsBucket).toBe("troupe_prod-eu_snapshots");
    expect(n.quarantineBucket).toBe("troupe_prod-eu_quarantine");
    expect(n.membersBucket).toBe("troupe_prod-eu_members");
    expect(n.clusterBucket).toBe("troupe_prod-eu_cluster");
    for (const bad of ["", "Prod", "1abc", "a.b", "a_b", "a".repeat(33), 5]) {
      expect(codeOf(() => namespaceNames(bad as string))).toBe(ErrorCode.CONFIG_ERROR);
    }
    expect(codeOf(() => n.clientSubject("a.b"))).toBe(ErrorCode.INVALID_ARGUMENT);
  });

  it("turns any address into a subject-safe token and back", () => {
    for (const a of ["counter/a", "bot/ä ö.*>/\u0000x", "#00ff", "~client", "t/🎭"]) {
      const t = subjectToken(a);
      expect(t).toMatch(/^[A-Za-z0-9_-]+$/);
      expect(addressFromToken(t)).toBe(a);
    }
    for (const bad of ["", "a", "a.b", "ab=", "__8", "@@"]) {
      expect(codeOf(() => addressFromToken(bad))).toBe(ErrorCode.INVALID_ARGUMENT);
    }
    // invalid UTF-8 does not round-trip: refused
    expect(codeOf(() => addressFromToken(Buffer.from([0xff, 0xfe]).toString("base64url")))).toBe(
      ErrorCode.INVALID_ARGUMENT,
    );
  });

  it("shards agents by agent id and bound callables by their hex id", () => {
    expect(shardOfAddress("counter/a", 64)).toBe(shardOf(agentId("counter", "a"), 64));
    const id = agentId("x", "y");
    expect(shardOfAddress(`#${toHex(id)}`, 256)).toBe(shardOf(fromHex(toHex(id)), 256));
    expect(codeOf(() => shardOfAddress("~client", 64))).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(codeOf(() => shardOfAddress("#zz", 64))).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(codeOf(() => shardOfAddress("nokey", 64))).toBe(ErrorCode.INVALID_ARGUMENT);
  });
});

describe("ensureNamespace on a server", () => {
  let ns: NatsServer;
  let nc: NatsConnection;

  beforeAll(async () => {
    ({ ns, nc } = await setup());
  });
  afterAll(async () => {
    await cleanup(ns, nc);
  });

  it("creates every object once, then finds them", async () => {
    const namespace = freshNamespace("ns");
    const first = await ensureNamespace(nc, { namespace, shardCount: 3 });
    expect(first).toMatchObject({ namespace, shardCount: 3, replicas: 1, created: true });
    const again = await ensureNamespace(nc, { namespace });
    expect(again).toMatchObject({ shardCount: 3, created: false, createdAt: first.createdAt });
    const jsm = await jetstreamManager(nc);
    const names = namespaceNames(namespace);
    const inbox = await jsm.streams.info(names.inboxStream);
    expect(inbox.config).toMatchObject({
      subjects: [names.inboxSubjects],
      storage: "file",
      retention: "limits",
      discard: "old",
      max_age: 7 * 24 * 3600 * 1e9,
      duplicate_window: 120 * 1e9,
      max_msg_size: nc.info!.max_payload,
    });
    const c = await jsm.consumers.info(names.inboxStream, "shard-2");
    expect(c.config).toMatchObject({
      durable_name: "shard-2",
      filter_subject: names.shardFilter(2),
      ack_policy: "explicit",
      ack_wait: 30e9,
      max_ack_pending: 1024,
      deliver_policy: "all",
    });
    await expect(jsm.consumers.info(names.inboxStream, "shard-3")).rejects.toThrow();
    const streams: string[] = [];
    for await (const s of jsm.streams.names()) streams.push(s);
    for (const b of ["snapshots", "quarantine", "members", "cluster"]) {
      expect(streams).toContain(`KV_troupe_${namespace}_${b}`);
    }
    expect(streams).toContain(names.parkedStream);
    // held messages never age out: no max_age, and nothing discarded to make room
    const held = await jsm.streams.info(names.heldStream);
    expect(held.config).toMatchObject({
      max_age: 0,
      discard: "new",
      subjects: [names.heldSubjects],
    });
    // atomic batches (2.12+): a quarantined agent's messages are held many at a time
    expect(held.config.allow_atomic).toBe(true);
    expect(first.heldAtomic).toBe(true);
  });

  it("refuses a shard count that differs from the namespace's", async () => {
    const namespace = freshNamespace("ns");
    await ensureNamespace(nc, { namespace, shardCount: 4 });
    let err: TroupeError | undefined;
    try {
      await ensureNamespace(nc, { namespace, shardCount: 8 });
    } catch (e) {
      err = e as TroupeError;
    }
    expect(err?.code).toBe(ErrorCode.CONFIG_ERROR);
    expect(err?.message).toContain("has 4 shards");
    expect(err?.details).toMatchObject({ stored: 4, configured: 8 });
  });

  it("is safe when several processes create the same namespace at once", async () => {
    const namespace = freshNamespace("ns");
    const conns = await Promise.all(
      Array.from({ length: 4 }, () => natsConnect({ servers: ns.url })),
    );
    try {
      const results = await Promise.all(
        conns.map((c) => ensureNamespace(c, { namespace, shardCount: 4 })),
      );
      expect(results.map((r) => r.shardCount)).toEqual([4, 4, 4, 4]);
      expect(results.filter((r) => r.created)).toHaveLength(1);
    } finally {
      await Promise.all(conns.map((c) => c.close()));
    }
  });

  it("create: false finds an existing namespace and never creates one", async () => {
    const namespace = freshNamespace("ns");
    const missing = await ensureNamespace(nc, { namespace, create: false }).catch(
      (e: unknown) => e,
    );
    expect(isNamespaceMissing(missing)).toBe(true);
    expect((missing as TroupeError).code).toBe(ErrorCode.INVALID_STATE);
    expect((missing as TroupeError).message).toContain("does not exist yet");
    const jsm = await jetstreamManager(nc);
    const streams: string[] = [];
    for await (const s of jsm.streams.names()) streams.push(s);
    expect(streams.filter((n) => n.includes(namespace))).toEqual([]);
    await ensureNamespace(nc, { namespace, shardCount: 5 });
    expect(await ensureNamespace(nc, { namespace, create: false })).toMatchObject({
      shardCount: 5,
      created: false,
    });
  });

  it("openNamespace waits for the creator, whose shard count wins", async () => {
    const namespace = freshNamespace("ns");
    const said: string[] = [];
    const logger = infoLines(said);
    // a worker (or client) that comes up before the coordinator
    const opened = openNamespace(nc, { namespace, logger });
    await new Promise((r) => setTimeout(r, 400));
    await ensureNamespace(nc, { namespace, shardCount: 6 });
    expect(await opened).toMatchObject({ shardCount: 6, created: false });
    expect(said.filter((m) => m.includes("waiting for it"))).toHaveLength(1);
    // with a limit, it gives up with the typed error
    const gaveUp = await openNamespace(nc, { namespace: freshNamespace("ns"), waitMs: 300 }).catch(
      (e: unknown) => e,
    );
    expect(isNamespaceMissing(gaveUp)).toBe(true);
  });

  it("openNamespace stops waiting when its signal is aborted (SHUTDOWN)", async () => {
    const namespace = freshNamespace("ns");
    const said: string[] = [];
    const logger = infoLines(said);
    const abort = new AbortController();
    const opening = openNamespace(nc, { namespace, logger, signal: abort.signal }).catch(
      (e: unknown) => e,
    );
    await waitFor("it to wait for the namespace", () =>
      said.some((m) => m.includes("waiting for it")),
    );
    abort.abort();
    const e = (await opening) as TroupeError;
    expect(e.code).toBe(ErrorCode.SHUTDOWN);
    expect(e.message).toBe(`stopped waiting for namespace "${namespace}"`);
    // the connection is still usable: only the wait ended
    expect(nc.isClosed()).toBe(false);
  });

  it("creates the inbox with maxAgeMs; a creator changes it later, workers and clients never do", async () => {
    const namespace = freshNamespace("ns");
    const names = namespaceNames(namespace);
    const jsm = await jetstreamManager(nc);
    const maxAge = async () => (await jsm.streams.info(names.inboxStream)).config.max_age;
    const HOUR = 3600 * 1000;
    const created = await ensureNamespace(nc, { namespace, shardCount: 2, maxAgeMs: 2 * HOUR });
    expect(await maxAge()).toBe(2 * HOUR * 1e6);
    expect(created.maxAgeMs).toBe(2 * HOUR);

    // a worker or client (create: false) leaves it, whatever it asks for
    const opened = await ensureNamespace(nc, { namespace, create: false, maxAgeMs: 5 * HOUR });
    expect(await maxAge()).toBe(2 * HOUR * 1e6);
    expect(opened.maxAgeMs).toBe(2 * HOUR);
    // a creator that does not ask for an age keeps the inbox's own
    await ensureNamespace(nc, { namespace });
    expect(await maxAge()).toBe(2 * HOUR * 1e6);

    // a creator (the coordinator) with another age changes it, and says so
    const said: string[] = [];
    const longer = await ensureNamespace(nc, {
      namespace,
      maxAgeMs: 3 * 24 * HOUR,
      logger: infoLines(said),
    });
    expect(await maxAge()).toBe(3 * 24 * HOUR * 1e6);
    expect(longer.maxAgeMs).toBe(3 * 24 * HOUR);
    expect(said).toContain("inbox max_age changed from 2h to 3d");
    // shortening deletes older messages on the server: the line says so
    said.length = 0;
    await ensureNamespace(nc, { namespace, maxAgeMs: 90 * 60 * 1000, logger: infoLines(said) });
    expect(await maxAge()).toBe(90 * 60 * 1000 * 1e6);
    expect(said.filter((m) => m.startsWith("inbox max_age changed"))).toEqual([
      "inbox max_age changed from 3d to 90m: the server deletes messages older than 90m now, and replay reaches back no further",
    ]);
    // the same age again: nothing to change, nothing said
    said.length = 0;
    await ensureNamespace(nc, { namespace, maxAgeMs: 90 * 60 * 1000, logger: infoLines(said) });
    expect(said.filter((m) => m.startsWith("inbox max_age"))).toEqual([]);
    // the rest of the inbox's configuration is what it was
    const inbox = await jsm.streams.info(names.inboxStream);
    expect(inbox.config).toMatchObject({
      subjects: [names.inboxSubjects],
      duplicate_window: 120 * 1e9,
      discard: "old",
      allow_direct: true,
      metadata: { "troupe.kind": "inbox", "troupe.namespace": namespace },
    });
  });

  it("refuses an inbox max age shorter than its dedup window", async () => {
    const e = (await ensureNamespace(nc, {
      namespace: freshNamespace("ns"),
      maxAgeMs: 60_000,
    }).catch((x: unknown) => x)) as TroupeError;
    expect(e.code).toBe(ErrorCode.CONFIG_ERROR);
    expect(e.message).toBe("maxAgeMs (60000 ms) must be at least duplicateWindowMs (120000 ms)");
  });

  it("refuses settings the server cannot have, with the server's reason", async () => {
    const e = await ensureNamespace(nc, { namespace: freshNamespace("ns"), replicas: 3 }).catch(
      (x: unknown) => x as TroupeError,
    );
    expect(e).toBeInstanceOf(TroupeError);
    expect((e as TroupeError).code).toBe(ErrorCode.CONFIG_ERROR);
    await expect(ensureNamespace(nc, { namespace: "Bad" })).rejects.toMatchObject({
      code: ErrorCode.CONFIG_ERROR,
    });
    await expect(ensureNamespace(nc, { namespace: "ok", shardCount: 0 })).rejects.toMatchObject({
      code: ErrorCode.CONFIG_ERROR,
    });
  });

  it("refuses a server without JetStream, clearly", async () => {
    const plain = await startNatsServer({ jetstream: false });
    const c = await natsConnect({ servers: plain.url });
    try {
      const e = (await ensureNamespace(c, { namespace: "x" }).catch(
        (x: unknown) => x,
      )) as TroupeError;
      expect(e.code).toBe(ErrorCode.CONFIG_ERROR);
      expect(e.message).toContain("JetStream is not enabled");
    } finally {
      await cleanup(plain, c);
    }
  });
});

describe("connectNats", () => {
  it("says it is waiting while no server answers, and connects once one does", async () => {
    const server = await startNatsServer();
    const url = server.url;
    await server.stop();
    const lines: string[] = [];
    const logger: Logger = {
      debug() {},
      info: (_o, m) => lines.push(`info ${m}`),
      warn: (_o, m) => lines.push(`warn ${m}`),
      error: (_o, m) => lines.push(`error ${m}`),
    };
    const connecting = connectNats(url, { logger, maxBackoffMs: 200 });
    await new Promise((r) => setTimeout(r, 600));
    expect(lines.some((l) => l.startsWith(`warn waiting for NATS at ${url}`))).toBe(true);
    await server.restart();
    const nc = await connecting;
    expect(nc.isClosed()).toBe(false);
    expect(lines.at(-1)).toContain("connected to NATS");
    await cleanup(server, nc);
  });

  it("gives up after waitMs with a clear TRANSPORT_ERROR", async () => {
    const e = (await connectNats("nats://127.0.0.1:1", { waitMs: 300, maxBackoffMs: 100 }).catch(
      (x: unknown) => x,
    )) as TroupeError;
    expect(e.code).toBe(ErrorCode.TRANSPORT_ERROR);
    expect(e.message).toContain("nats://127.0.0.1:1 is not reachable");
  });

  it("stops waiting when its signal is aborted (SHUTDOWN)", async () => {
    const lines: string[] = [];
    const logger: Logger = {
      debug() {},
      info() {},
      warn: (_o, m) => lines.push(m ?? ""),
      error() {},
    };
    const abort = new AbortController();
    const connecting = connectNats("nats://127.0.0.1:1", { logger, signal: abort.signal }).catch(
      (x: unknown) => x,
    );
    await waitFor("it to wait for NATS", () => lines.length > 0);
    abort.abort();
    const e = (await connecting) as TroupeError;
    expect(e.code).toBe(ErrorCode.SHUTDOWN);
    expect(e.message).toBe("stopped waiting for NATS at nats://127.0.0.1:1");
    await expect(
      connectNats("nats://127.0.0.1:1", { signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({
      code: ErrorCode.SHUTDOWN,
    });
  });
});
