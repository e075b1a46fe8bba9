/**
 * Sealed agent traffic with real processes: a built coordinator and a worker given a channel
 * keys directory (TROUPE_CHANNEL_KEYS_DIR), and the built `troupe` CLI with the same keys
 * (--channel-keys-dir) doing send and request. What the inbox stream stores is sealed. A CLI
 * without the keys, or with the wrong ones, is refused and says so; a worker with a bad key
 * file does not start.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { namespaceNames } from "@troupe/nats";
import { type NatsServerHandle, natsServerMissing } from "@troupe/testkit";
import { peekEnvelope } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildApps,
  connectedServer,
  logTail,
  procs,
  repo,
  runCli,
  spawnCoordinator,
  spawnWorker,
  type Target,
  teardown,
  waitFor,
  waitForAllShards,
} from "./procs.js";

const FIXTURE = join(repo, "apps/worker/test/fixtures/ordered-counter.mjs");
const NAMESPACE = "sealed";
const SHARDS = 4;
const WORKER = "worker-s";
const MARKER = "plaintext-marker-9d2b";

const natsMissing = natsServerMissing();

let server: NatsServerHandle;
let nc: NatsConnection;
let dir: string;
/** The workers' keys: `main` as 64 hex digits. */
let keys: string;
/** A key of the same name with other bytes. */
let wrongKeys: string;

const troupe = (...args: string[]) => runCli(server.url, NAMESPACE, ...args);
/** The counter's state, asked by a CLI that has the workers' keys. */
const getWithKeys = () =>
  troupe(
    "request",
    "ordered-counter/s",
    '{"type":"get"}',
    "--timeout",
    "15000",
    "--channel-keys-dir",
    keys,
  );
const target = (): Target => ({ servers: server.url, namespace: NAMESPACE });

describe.skipIf(natsMissing !== undefined)(`sealed agent traffic ${natsMissing ?? ""}`, () => {
  beforeAll(async () => {
    await buildApps();
    dir = await mkdtemp(join(tmpdir(), "troupe-sealed-"));
    keys = join(dir, "keys");
    wrongKeys = join(dir, "wrong");
    await mkdir(keys);
    await mkdir(wrongKeys);
    await writeFile(join(keys, "main"), `${"5a".repeat(32)}\n`);
    await writeFile(join(wrongKeys, "main"), Buffer.alloc(32, 7));
    ({ server, nc } = await connectedServer());
    spawnCoordinator(target(), { shards: SHARDS });
    spawnWorker(target(), {
      id: WORKER,
      agents: [FIXTURE],
      env: { TROUPE_CHANNEL_KEYS_DIR: keys },
    });
    try {
      await waitForAllShards(nc, NAMESPACE, WORKER, SHARDS, 60_000);
    } catch (e) {
      for (const p of procs) console.error(logTail(p));
      throw e;
    }
  }, 300_000);

  afterAll(async () => {
    await teardown(server, nc);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it("the CLI with the workers' keys sends and requests; the inbox stream holds only sealed frames", async () => {
    const event = JSON.stringify({ type: "inc", sender: MARKER, seq: 1 });
    const sent = await troupe(
      "send",
      "ordered-counter/s",
      event,
      "--json",
      "--channel-keys-dir",
      keys,
    );
    expect(sent.code, sent.stderr).toBe(0);
    const { sequence } = JSON.parse(sent.stdout) as { sequence: number };
    const got = await getWithKeys();
    expect(got.code, got.stderr).toBe(0);
    expect(JSON.parse(got.stdout)).toMatchObject({ count: 1, last: { [MARKER]: 1 } });

    const jsm = await jetstreamManager(nc);
    const stored = await jsm.streams.getMessage(namespaceNames(NAMESPACE).inboxStream, {
      seq: sequence,
    });
    expect(stored).toBeTruthy();
    const data = stored!.data;
    expect(peekEnvelope(data)).toMatchObject({
      sealed: true,
      envelope: { to: "ordered-counter/s", channel: "key:main" },
    });
    expect(Buffer.from(data).toString("latin1")).not.toContain(MARKER);
  });

  it("a CLI without the keys is refused: request fails with CRYPTO_ERROR and says what to do; a send is parked, not applied", async () => {
    const req = await troupe(
      "request",
      "ordered-counter/s",
      '{"type":"get"}',
      "--timeout",
      "15000",
    );
    expect(req.code).toBe(1);
    expect(req.stderr).toContain("CRYPTO_ERROR");
    expect(req.stderr).toContain("--channel-keys-dir");

    const parkedBefore = await parkedCount();
    const event = JSON.stringify({ type: "inc", sender: "plain", seq: 1 });
    // stored in the inbox: all a send confirms
    const sent = await troupe("send", "ordered-counter/s", event);
    expect(sent.code, sent.stderr).toBe(0);
    await waitFor("the plain frame parked", async () => (await parkedCount()) > parkedBefore);
    const got = await getWithKeys();
    expect(got.code, got.stderr).toBe(0);
    expect(JSON.parse(got.stdout)).toMatchObject({ count: 1 });
  });

  it("a CLI with a wrong key of the same name: its request times out saying the reply was refused", async () => {
    const req = await troupe(
      "request",
      "ordered-counter/s",
      '{"type":"get"}',
      "--timeout",
      "3000",
      "--channel-keys-dir",
      wrongKeys,
    );
    expect(req.code).toBe(1);
    expect(req.stderr).toContain("TIMEOUT");
    expect(req.stderr).toContain("a reply came and was refused (CRYPTO_ERROR");
    expect(req.stderr).toContain(`Do the keys in ${wrongKeys} match the workers'`);
  });

  it("a worker given a bad key file exits with the configuration exit code, naming the file", async () => {
    const bad = join(dir, "bad");
    await mkdir(bad);
    await writeFile(join(bad, "main"), "not a key");
    const p = spawnWorker(target(), {
      id: "bad",
      name: "worker-bad",
      agents: [FIXTURE],
      env: { TROUPE_CHANNEL_KEYS_DIR: bad },
    });
    expect(await p.exited).toBe(2);
    expect(p.logs.join("\n")).toContain(`${join(bad, "main")} is not a key`);
  });
});

async function parkedCount(): Promise<number> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(namespaceNames(NAMESPACE).parkedStream);
  return info.state.messages;
}
