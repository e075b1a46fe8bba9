/**
 * Sender quarantine on NATS: a raw client publishes garbage frames with a forged but readable
 * envelope onto an agent's inbox subject; the runtime quarantines the sender they name in the
 * quarantine bucket (KV), refuses its later frames, and keeps serving everyone else. A release
 * written straight into the bucket (as the coordinator does for a client) reaches the runtime
 * through its bucket watch, long before its periodic listing.
 */
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { createRuntime, defineAgent, type QuarantineEntry, type Runtime } from "@troupe/runtime";
import { cleanup, type NatsServer, setup } from "@troupe/testkit";
import { ErrorCode, encodeFrame, type Frame, newMessageId } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assign, setup as machineSetup } from "xstate";
import {
  createNatsBackend,
  type NatsBackend,
  namespaceNames,
  shardOfAddress,
  subjectToken,
} from "../src/internal.js";
import { connectTo, freshNamespace, waitFor } from "./helpers.js";

const counterMachine = machineSetup({
  types: {
    context: {} as { count: number },
    events: {} as { type: "inc"; by: number } | { type: "get" },
  },
}).createMachine({
  context: { count: 0 },
  on: { inc: { actions: assign({ count: ({ context, event }) => context.count + event.by }) } },
});
const counter = defineAgent({ type: "counter", machine: counterMachine });

const SHARDS = 4;

let ns: NatsServer;
let nc: NatsConnection;
let raw: NatsConnection;
let namespace: string;
let backend: NatsBackend;
let runtime: Runtime;

beforeAll(async () => {
  ({ ns, nc } = await setup());
  raw = await connectTo(ns.url);
  namespace = freshNamespace("sq");
  backend = await createNatsBackend({ nc, namespace, shardCount: SHARDS, shards: "all" });
  runtime = await createRuntime({
    agents: [counter],
    backend,
    limits: { maxFrameBytes: backend.maxFrameBytes },
    senderFailureLimit: 5,
    // long: what this test sees of other processes' changes comes through the bucket watch
    quarantineRefreshMs: 600_000,
  });
});

afterAll(async () => {
  await runtime?.shutdown();
  await raw?.close();
  await cleanup(ns, nc);
});

let seq = 0;
function frameFrom(from: string, to: string, by: number): Frame {
  return {
    envelope: {
      version: 1,
      kind: "event",
      messageId: newMessageId(),
      from,
      to,
      sequence: ++seq,
      timestampNs: 1n,
    },
    message: { kind: "data", payload: { type: "inc", by, pad: "x".repeat(32) } },
  };
}

/** Publishes bytes onto the agent's inbox subject with a plain JetStream client (no backend). */
async function publishRaw(to: string, bytes: Uint8Array): Promise<void> {
  const names = namespaceNames(namespace);
  const subject = names.inboxSubject(shardOfAddress(to, SHARDS), subjectToken(to));
  await jetstream(raw).publish(subject, bytes, { msgID: newMessageId() });
}

async function countOf(key: string): Promise<number> {
  const stored = await backend.snapshots.get(`counter/${key}`);
  return (stored?.record.state as { context?: { count: number } } | undefined)?.context?.count ?? 0;
}

describe("sender quarantine over NATS", () => {
  it("quarantines a sender of garbage frames in the KV registry; others keep being served", async () => {
    const to = "counter/victim";
    const mallory = "~mallory";
    const kv = await new Kvm(raw).open(namespaceNames(namespace).quarantineBucket);

    await runtime.ref(counter, "victim").send({ type: "inc", by: 1 });
    for (let i = 0; i < 5; i++) {
      const whole = encodeFrame(frameFrom(mallory, to, 100));
      // the envelope reads, the body does not decode (cut short): DECODE_ERROR
      await publishRaw(to, whole.subarray(0, whole.length - 20));
      // another client keeps sending to the same agent meanwhile
      await publishRaw(to, encodeFrame(frameFrom("~alice", to, 1)));
    }

    const stored = await waitFor("the sender's entry in the quarantine bucket", async () => {
      const e = await kv.get(subjectToken(mallory));
      return e !== null && e.operation === "PUT" ? e.json<QuarantineEntry>() : undefined;
    });
    expect(stored).toMatchObject({ address: mallory, by: "auto", refuseFrames: true });
    expect(stored.reason).toContain("5 frames within 60000 ms (5 DECODE_ERROR)");
    expect(stored.reason).toMatch(/last: DECODE_ERROR: /);
    expect(await runtime.quarantined()).toEqual([expect.objectContaining({ address: mallory })]);

    // now even a well-formed frame from it is refused and parked; alice is still served
    await publishRaw(to, encodeFrame(frameFrom(mallory, to, 1000)));
    await publishRaw(to, encodeFrame(frameFrom("~alice", to, 10)));
    await waitFor("alice's frames handled", async () => (await countOf("victim")) === 16);
    await runtime.settled();
    const parked = (await runtime.parked(100)).filter((p) => p.to === to);
    expect(parked.map((p) => p.code)).toEqual([
      ...Array(5).fill(ErrorCode.DECODE_ERROR),
      ErrorCode.QUARANTINED,
    ]);
    expect(parked[5]!.reason).toContain(`sender ${mallory} is quarantined`);
    expect(await countOf("victim")).toBe(16);

    // released by deleting the entry (what ctl.release does for a client): the watch applies
    // it here without waiting for the ten-minute listing
    await kv.delete(subjectToken(mallory));
    await waitFor("the release to reach the runtime", async () => {
      await publishRaw(to, encodeFrame(frameFrom(mallory, to, 1000)));
      await runtime.settled();
      return (await countOf("victim")) >= 1016;
    });
    expect(await runtime.quarantined()).toEqual([]);
  });
});
