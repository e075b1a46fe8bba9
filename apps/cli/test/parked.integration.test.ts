/**
 * `troupe parked` against a real nats-server, with a worker (the counter agent, sealing its
 * traffic with a channel key) running in this process: frames it refuses for real — an agent
 * type it does not define, a plain frame where traffic is sealed — are listed by the command,
 * run in-process and as the built binary.
 */

import { execFile, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { NatsConnection } from "@nats-io/transport-node";
import { counter } from "@troupe/example-counter";
import { connectNats, createNatsBackend, ensureNamespace, type NatsBackend } from "@troupe/nats";
import { createRuntime, type Runtime } from "@troupe/runtime";
import { type NatsServerHandle, natsServerMissing, startNatsServer } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ParkedEntry } from "../src/commands/parked.js";
import { troupe } from "./helpers.js";

const NS = "ptest";
const KEY = new Uint8Array(32).fill(7);
const root = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");
const cliMain = join(root, "apps/cli/dist/main.js");

const natsMissing = natsServerMissing();

describe.skipIf(natsMissing !== undefined)(`troupe parked ${natsMissing ?? ""}`, () => {
  let server: NatsServerHandle;
  let nc: NatsConnection;
  let backend: NatsBackend;
  let runtime: Runtime;
  let keysDir: string;
  let env: Record<string, string>;

  /** Resolves once the worker has parked `n` frames in all. */
  async function parkedCount(n: number): Promise<void> {
    const deadline = Date.now() + 20_000;
    while ((await backend.parked.count()) < n) {
      if (Date.now() > deadline) throw new Error(`fewer than ${n} frames parked after 20 s`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  beforeAll(async () => {
    if (!existsSync(cliMain)) {
      execFileSync("npx", ["turbo", "run", "build", "--output-logs=errors-only"], {
        cwd: root,
        stdio: "inherit",
        timeout: 300_000,
      });
    }
    server = await startNatsServer();
    env = { TROUPE_NATS_URL: server.url, TROUPE_NAMESPACE: NS };
    keysDir = await mkdtemp(join(tmpdir(), "troupe-parked-keys-"));
    await writeFile(join(keysDir, "k1"), KEY);
    nc = await connectNats(server.url);
    const info = await ensureNamespace(nc, { namespace: NS, shardCount: 4 });
    backend = await createNatsBackend({ nc, namespaceInfo: info, shards: "all" });
    runtime = await createRuntime({
      agents: [counter],
      backend,
      limits: { maxFrameBytes: backend.maxFrameBytes },
      sealing: { keys: { k1: KEY } },
    });
  }, 320_000);

  afterAll(async () => {
    await runtime?.shutdown().catch(() => {});
    await nc?.close().catch(() => {});
    await server?.cleanup();
    if (keysDir !== undefined) await rm(keysDir, { recursive: true, force: true });
  }, 30_000);

  it("nothing parked: says so, exit 0; --json prints an empty array", async () => {
    const r = await troupe(["parked"], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`nothing is parked in namespace ${NS}\n`);
    const json = await troupe(["parked", "--json"], env);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual([]);
  });

  it("lists what the worker refused, newest last: table, --json, --limit, the built binary", async () => {
    // sealed with the worker's key, to a type it does not define: UNKNOWN_AGENT
    const ghost = await troupe(
      ["send", "ghost/g1", '{"type":"boo"}', "--json", "--channel-keys-dir", keysDir],
      env,
    );
    expect(ghost.code, ghost.stderr).toBe(0);
    const ghostReceipt = JSON.parse(ghost.stdout) as { messageId: string; sequence: number };
    await parkedCount(1);
    // no keys: a plain frame where traffic is sealed, CRYPTO_ERROR
    const plain = await troupe(["send", "counter/c1", '{"type":"inc","by":1}', "--json"], env);
    expect(plain.code, plain.stderr).toBe(0);
    const plainReceipt = JSON.parse(plain.stdout) as { messageId: string; sequence: number };
    await parkedCount(2);
    // the first is parked as it came, sealed: its sender is read from the envelope in clear
    const stored = await backend.parked.list(2);
    expect(stored[0]?.frame).toBeUndefined();
    expect(stored[0]?.bytes).toBeDefined();
    expect(stored[1]?.frame?.envelope.from).toMatch(/^~/);

    const json = await troupe(["parked", "--json"], env);
    expect(json.code, json.stderr).toBe(0);
    const entries = JSON.parse(json.stdout) as ParkedEntry[];
    expect(entries).toHaveLength(2);
    for (const e of entries) {
      expect(Object.keys(e)).toEqual([
        "at",
        "code",
        "to",
        "from",
        "kind",
        "messageId",
        "inboxSequence",
        "reason",
      ]);
      expect(new Date(e.at).toISOString()).toBe(e.at);
    }
    expect(entries[0]).toMatchObject({
      code: "UNKNOWN_AGENT",
      to: "ghost/g1",
      from: expect.stringMatching(/^~\S+$/),
      kind: "event",
      messageId: ghostReceipt.messageId,
      inboxSequence: ghostReceipt.sequence,
      reason: expect.stringContaining('"ghost"'),
    });
    expect(entries[1]).toMatchObject({
      code: "CRYPTO_ERROR",
      to: "counter/c1",
      from: expect.stringMatching(/^~\S+$/),
      kind: "event",
      messageId: plainReceipt.messageId,
      inboxSequence: plainReceipt.sequence,
      reason: expect.stringMatching(/not sealed/),
    });

    const text = await troupe(["parked"], env);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.split("\n");
    expect(lines[0]).toBe(`2 parked frames in namespace ${NS}, newest last`);
    expect(text.stdout).toMatch(
      /│ at\s+│ code\s+│ to\s+│ from\s+│ kind\s+│ message id\s+│ inbox seq\s+│ reason\s+│/,
    );
    const rows = lines.filter((l) => /│ \d{4}-\d\d-\d\dT/.test(l));
    expect(rows).toHaveLength(2);
    expect(rows[0]).toContain(`│ UNKNOWN_AGENT │ ghost/g1`);
    expect(rows[0]).toContain(`│ ${entries[0]?.from} `);
    expect(rows[0]).toContain(`│ ${ghostReceipt.messageId} │ ${ghostReceipt.sequence} `);
    expect(rows[1]).toContain(`│ CRYPTO_ERROR  │ counter/c1`);
    expect(rows[1]).toContain(`│ ${plainReceipt.messageId} │ ${plainReceipt.sequence} `);
    // the payloads are not shown (the plain event is readable in the stream)
    expect(text.stdout).not.toContain('"by"');

    const last = await troupe(["parked", "--limit", "1"], env);
    expect(last.code, last.stderr).toBe(0);
    expect(last.stdout.split("\n")[0]).toBe(
      `showing the last 1 of 2 parked frames in namespace ${NS}, newest last`,
    );
    expect(last.stdout).toContain("CRYPTO_ERROR");
    expect(last.stdout).not.toContain("UNKNOWN_AGENT");
    const lastJson = await troupe(["parked", "--limit", "1", "--json"], env);
    expect(JSON.parse(lastJson.stdout)).toEqual([entries[1]]);

    // the built command, as operators run it
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [cliMain, "parked", "--json", "--nats", server.url, "--namespace", NS],
      { cwd: root, timeout: 30_000 },
    );
    expect(JSON.parse(stdout)).toEqual(entries);
  });

  it("a namespace that does not exist: a clear message, exit 1", async () => {
    const r = await troupe(["parked", "--namespace", "nobody-home"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `troupe: namespace nobody-home does not exist at ${server.url} (a coordinator creates it)\n`,
    );
    expect(r.stdout).toBe("");
  });
});
