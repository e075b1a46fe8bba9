import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { type ClusterStatus, renderStatus } from "../src/commands/status.js";
import { readiness } from "../src/dev/readiness.js";
import { duration, shardRanges } from "../src/format.js";
import { troupe } from "./helpers.js";

/** A loopback port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen({ host: "127.0.0.1", port: 0 }, r));
  const address = server.address();
  await new Promise<void>((r) => server.close(() => r()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

describe("troupe command line", () => {
  it("--help lists the commands with one-line descriptions", async () => {
    const r = await troupe(["--help"]);
    expect(r.code).toBe(0);
    for (const command of ["status", "send", "request", "parked", "dev"]) {
      expect(r.stdout).toMatch(new RegExp(`^\\s+${command}\\b.*\\S`, "m"));
    }
    expect(r.stdout).toContain("--nats");
    expect(r.stdout).toContain("TROUPE_NATS_URL");
    expect(r.stdout).toContain("TROUPE_NAMESPACE");
    expect(r.stdout).toContain("--channel-keys-dir");
    expect(r.stdout).toContain("TROUPE_CHANNEL_KEYS_DIR");
    expect(r.stdout).toContain("TROUPE_SEAL_WITH");
  });

  it("no command: help on stderr, exit 2", async () => {
    const r = await troupe([]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Commands:");
  });

  it("an unknown command or option is a usage error (exit 2)", async () => {
    const unknown = await troupe(["stauts"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command 'stauts'/);
    expect(unknown.stderr).toMatch(/Did you mean status\?/);
    const option = await troupe(["status", "--jsno"]);
    expect(option.code).toBe(2);
    expect(option.stderr).toMatch(/unknown option '--jsno'/);
  });

  it("send: a bad address is a usage error, before any connection", async () => {
    for (const address of ["noslash", "/key", "Bad Type/key"]) {
      const r = await troupe(["send", address, '{"type":"get"}', "--nats", "nats://127.0.0.1:1"]);
      expect(r.code, address).toBe(2);
      expect(r.stderr).toMatch(/^troupe: invalid agent (address|type)/m);
    }
  });

  it("send and request: bad JSON and events without a type are usage errors", async () => {
    const cases: [string, RegExp][] = [
      ["{type:get}", /the event is not valid JSON/],
      ["[1,2]", /the event must be a JSON object/],
      ["42", /the event must be a JSON object/],
      ['{"by":2}', /needs a string "type" field/],
    ];
    for (const command of ["send", "request"]) {
      for (const [event, message] of cases) {
        const r = await troupe([command, "counter/a", event, "--nats", "nats://127.0.0.1:1"]);
        expect(r.code, `${command} ${event}`).toBe(2);
        expect(r.stderr).toMatch(message);
        expect(r.stdout).toBe("");
      }
    }
  });

  it("a missing argument is a usage error", async () => {
    const r = await troupe(["send", "counter/a"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/missing required argument 'event'/);
  });

  it("numeric options are checked", async () => {
    const timeout = await troupe(["request", "counter/a", '{"type":"get"}', "--timeout", "soon"]);
    expect(timeout.code).toBe(2);
    expect(timeout.stderr).toMatch(/--timeout must be a whole number/);
    const workers = await troupe(["dev", "--workers", "0"]);
    expect(workers.code).toBe(2);
    expect(workers.stderr).toMatch(/--workers must be a whole number from 1 to 16/);
  });

  it("an invalid namespace or NATS URL is a usage error (flag or env)", async () => {
    const flag = await troupe(["status", "--namespace", "Not_OK"]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/invalid namespace "Not_OK"/);
    const env = await troupe(["status"], { TROUPE_NAMESPACE: "9lives" });
    expect(env.code).toBe(2);
    expect(env.stderr).toMatch(/invalid namespace "9lives"/);
    const url = await troupe(["status", "--nats", "http://x y"]);
    expect(url.code).toBe(2);
    expect(url.stderr).toMatch(/invalid NATS URL/);
  });

  it("NATS not reachable: a clear message and exit 1", async () => {
    const port = await closedPort();
    const url = `nats://127.0.0.1:${port}`;
    const status = await troupe(["status"], { TROUPE_NATS_URL: url });
    expect(status.code).toBe(1);
    expect(status.stderr).toContain(`troupe: cannot connect to NATS at ${url}`);
    const send = await troupe(["send", "counter/a", '{"type":"get"}', "--nats", url]);
    expect(send.code).toBe(1);
    expect(send.stderr).toContain(`cannot connect to NATS at ${url}`);
    const parked = await troupe(["parked", "--nats", url]);
    expect(parked.code).toBe(1);
    expect(parked.stderr).toContain(`troupe: cannot connect to NATS at ${url}`);
    expect(parked.stdout).toBe("");
  });

  it("parked: --limit is a whole number from 1 to 1000 (exit 2, before any connection); --help says where the payloads are", async () => {
    for (const limit of ["0", "1001", "ten", "-1", "2.5"]) {
      const r = await troupe(["parked", "--limit", limit, "--nats", "nats://127.0.0.1:1"]);
      expect(r.code, limit).toBe(2);
      expect(r.stderr).toContain("--limit must be a whole number from 1 to 1000");
      expect(r.stdout).toBe("");
    }
    const help = await troupe(["parked", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("--limit <n>");
    expect(help.stdout).toContain("--json");
    expect(help.stdout).toContain("TROUPE_<NAMESPACE>_PARKED");
    expect(help.stdout).toContain("troupe replay");
  });

  it("channel keys: a bad key file, an empty directory, --seal-with alone are usage errors, before any connection", async () => {
    const port = await closedPort();
    const url = `nats://127.0.0.1:${port}`;
    const dir = await mkdtemp(join(tmpdir(), "troupe-cli-keys-"));
    try {
      const send = (env: Record<string, string>, ...flags: string[]) =>
        troupe(["send", "counter/a", '{"type":"get"}', "--nats", url, ...flags], env);
      const empty = await send({}, "--channel-keys-dir", dir);
      expect(empty.code).toBe(2);
      expect(empty.stderr).toContain(`${dir} holds no key files`);
      await writeFile(join(dir, "main"), "not a key\n");
      const bad = await send({ TROUPE_CHANNEL_KEYS_DIR: dir });
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain(`${join(dir, "main")} is not a key`);
      await writeFile(join(dir, "main"), "ab".repeat(32));
      await writeFile(join(dir, "next"), Buffer.alloc(32, 1));
      const several = await send({}, "--channel-keys-dir", dir);
      expect(several.code).toBe(2);
      expect(several.stderr).toContain("holds 2 keys (main, next)");
      const alone = await send({ TROUPE_SEAL_WITH: "main" });
      expect(alone.code).toBe(2);
      expect(alone.stderr).toContain("no --channel-keys-dir");
      // good keys: on to connecting (nothing listens there)
      const good = await send({ TROUPE_SEAL_WITH: "next" }, "--channel-keys-dir", dir);
      expect(good.code).toBe(1);
      expect(good.stderr).toContain(`cannot connect to NATS at ${url}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("output helpers", () => {
  it("shard ranges", () => {
    expect(shardRanges([])).toBe("-");
    expect(shardRanges([3])).toBe("3");
    expect(shardRanges([5, 0, 1, 2, 7, 8])).toBe("0-2, 5, 7-8");
  });

  it("durations", () => {
    expect(duration(0)).toBe("0 ms");
    expect(duration(999)).toBe("999 ms");
    expect(duration(1250)).toBe("1.3 s");
    expect(duration(125_000)).toBe("2 min 5 s");
    expect(duration(Number.NaN)).toBe("?");
  });

  const status: ClusterStatus = {
    namespace: "default",
    shardCount: 8,
    leader: "coord-1",
    epoch: 4,
    workers: [
      { id: "worker-2", shards: [4, 5, 6], activeAgents: 1, heartbeatAgeMs: 420, draining: true },
      {
        id: "worker-1",
        shards: [0, 1, 2, 3],
        activeAgents: 3,
        heartbeatAgeMs: 80,
        draining: false,
      },
    ],
    unassigned: [7],
  };

  it("renders the status as a table", () => {
    const text = renderStatus(status);
    expect(text).toContain("namespace default: 8 shards, 2 workers, leader coord-1 (epoch 4)");
    const rows = text.split("\n").filter((l) => l.includes("worker-"));
    expect(rows).toHaveLength(2);
    expect(rows[0]).toMatch(/worker-1 .*│ 4 .*│ 0-3 .*│ 3 .*│ 80 ms .*│ no/);
    expect(rows[1]).toMatch(/worker-2 .*│ 3 .*│ 4-6 .*│ 1 .*│ 420 ms .*│ yes/);
    expect(text).toContain("unassigned shards: 1 (7)");
    expect(renderStatus({ ...status, workers: [], leader: null })).toContain(
      "no workers have joined yet",
    );
  });

  it("dev readiness: every worker live, no unassigned shard, an even split", () => {
    const ids = ["worker-1", "worker-2"];
    expect(readiness(status, ids)).toEqual({ text: "1 of 2 workers joined" });
    const live = status.workers.map((w) => ({ ...w, draining: false }));
    expect(readiness({ ...status, workers: live }, ids)).toEqual({
      text: "7 of 8 shards assigned",
    });
    expect(readiness({ ...status, workers: live, unassigned: [] }, ids)).toEqual({ done: true });
    const skewed = [
      { ...live[0]!, shards: [0, 1, 2, 3, 4, 5, 6] },
      { ...live[1]!, shards: [7] },
    ];
    expect(readiness({ ...status, workers: skewed, unassigned: [] }, ids)).toEqual({
      text: "balancing shards (7/1)",
    });
  });
});
