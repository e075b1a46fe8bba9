import { existsSync } from "node:fs";
import { jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type NatsClusterHandle, startNatsCluster } from "../src/index.js";

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const ms = (t0: number) => `${(performance.now() - t0).toFixed(0)} ms`;

/** Publishes until the stream accepts the message (while a new leader is elected). */
async function publishUntilAccepted(nc: NatsConnection, subject: string, id: string) {
  const js = jetstream(nc, { timeout: 1000 });
  const deadline = Date.now() + 25_000;
  for (let attempt = 1; ; attempt++) {
    try {
      return { ack: await js.publish(subject, id, { msgID: id }), attempt };
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

describe("startNatsCluster", () => {
  let cluster: NatsClusterHandle;
  let nc: NatsConnection;

  beforeAll(async () => {
    const t0 = performance.now();
    cluster = await startNatsCluster({ nodes: 3 });
    console.log(`3-node cluster with meta leader ${await cluster.metaLeader()} in ${ms(t0)}`);
    nc = await connect({
      servers: cluster.urls,
      reconnectTimeWait: 100,
      maxReconnectAttempts: -1,
    });
  }, 60_000);

  afterAll(async () => {
    await nc?.close();
    await cluster?.cleanup();
  });

  it("forms with all nodes running and a meta leader", async () => {
    expect(cluster.servers).toHaveLength(3);
    expect(cluster.urls).toEqual(cluster.servers.map((s) => s.url));
    expect(new Set(cluster.urls).size).toBe(3);
    expect(cluster.servers.map((s) => s.serverName)).toContain(await cluster.metaLeader());
  });

  it("creates an R3 stream right away and survives the loss of its leader", async () => {
    const jsm = await jetstreamManager(nc);
    let t0 = performance.now();
    await jsm.streams.add({
      name: "R3",
      subjects: ["r3.>"],
      storage: StorageType.File,
      num_replicas: 3,
    });
    console.log(`R3 stream created in ${ms(t0)}`);
    const js = jetstream(nc);
    for (let i = 0; i < 5; i++) await js.publish("r3.a", `before-${i}`, { msgID: `before-${i}` });

    const info = await jsm.streams.info("R3");
    expect(info.cluster?.replicas).toHaveLength(2);
    const leader = info.cluster?.leader;
    const victim = cluster.servers.findIndex((s) => s.serverName === leader);
    expect(victim).toBeGreaterThanOrEqual(0);
    const victimPid = cluster.servers[victim]!.pid;

    t0 = performance.now();
    await cluster.killNode(victim);
    expect(isAlive(victimPid)).toBe(false);
    const { ack, attempt } = await publishUntilAccepted(nc, "r3.a", "after-kill");
    console.log(
      `stream writable again ${ms(t0)} after SIGKILL of its leader ${leader} (attempt ${attempt})`,
    );
    expect(ack.seq).toBe(6);
    const after = await jsm.streams.info("R3");
    expect(after.cluster?.leader).not.toBe(leader);
    expect(after.state.messages).toBe(6);

    t0 = performance.now();
    await cluster.restartNode(victim);
    console.log(`node ${leader} restarted and current in ${ms(t0)}`);
    expect(cluster.servers[victim]!.running).toBe(true);
    // The restarted node is healthy (its replica caught up) as soon as restartNode returns;
    // the stream leader marks it current on its next append/heartbeat round trip.
    const deadline = Date.now() + 10_000;
    let healed = await jsm.streams.info("R3");
    while (!healed.cluster?.replicas?.every((r) => r.current && !r.offline)) {
      if (Date.now() > deadline)
        throw new Error(`replicas not current: ${JSON.stringify(healed.cluster)}`);
      await new Promise((r) => setTimeout(r, 50));
      healed = await jsm.streams.info("R3");
    }
    console.log(`all R3 replicas current ${ms(t0)} after the restart began`);
    expect(healed.state.messages).toBe(6);
    await js.publish("r3.a", "after-restart");
  });

  it("cleanup stops every node and removes their data dirs", async () => {
    const pids = cluster.servers.map((s) => s.pid);
    const dirs = cluster.servers.map((s) => s.dataDir);
    await nc.close();
    await cluster.cleanup();
    await cluster.cleanup(); // idempotent
    expect(pids.filter(isAlive)).toEqual([]);
    expect(dirs.filter((d) => existsSync(d))).toEqual([]);
  });
});
