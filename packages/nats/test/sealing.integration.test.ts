/**
 * Agent traffic sealed end to end on a real nats-server: what JetStream stores and what goes
 * over the client's direct subject is sealed (a marker in the event is nowhere in the bytes),
 * the agents still get their events, requests their replies, and a replay reads the sealed
 * history. A client without the key is refused.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createRuntime, defineAgent, type Runtime, reply, sendToAgent } from "@troupe/runtime";
import { cleanup, type NatsServer, setup } from "@troupe/testkit";
import { ErrorCode, peekEnvelope, TroupeError } from "@troupe/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assign, setup as machineSetup } from "xstate";
import {
  connect,
  createNatsBackend,
  type NatsBackend,
  namespaceNames,
  type TroupeClient,
} from "../src/index.js";
import { freshNamespace, waitFor } from "./helpers.js";

const MARKER = "plaintext-marker-5c1e";
const KEY = new Uint8Array(32).fill(42);

const notebook = defineAgent({
  type: "notebook",
  machine: machineSetup({
    types: {
      context: {} as { notes: string[] },
      events: {} as { type: "note"; text: string } | { type: "read" },
    },
  }).createMachine({
    context: { notes: [] },
    on: {
      note: { actions: assign({ notes: ({ context, event }) => [...context.notes, event.text] }) },
      read: { actions: reply(({ context }) => ({ type: "notes", notes: context.notes })) },
    },
  }),
});

/** Passes a note on to notebook/<key>: agent-to-agent traffic, through the outbox. */
const relay = defineAgent({
  type: "relay",
  machine: machineSetup({
    types: { events: {} as { type: "pass"; to: string; text: string } },
  }).createMachine({
    on: {
      pass: {
        actions: sendToAgent(
          "notebook",
          ({ event }) => event.to,
          ({ event }) => ({ type: "note", text: event.text }),
        ),
      },
    },
  }),
});

let ns: NatsServer;
let nc: NatsConnection;
let namespace: string;
let backend: NatsBackend;
let worker: Runtime;
let client: TroupeClient;

beforeAll(async () => {
  ({ ns, nc } = await setup());
  namespace = freshNamespace("seal");
  backend = await createNatsBackend({ nc, namespace, shardCount: 4, shards: "all" });
  worker = await createRuntime({
    agents: [notebook, relay],
    backend,
    limits: { maxFrameBytes: backend.maxFrameBytes },
    sealing: { keys: { main: KEY } },
  });
  client = await connect({
    servers: ns.url,
    namespace,
    requestTimeoutMs: 10_000,
    sealing: { keys: { main: KEY } },
  });
});

afterAll(async () => {
  await client?.close();
  await worker?.shutdown();
  await cleanup(ns, nc);
});

/** Every message the inbox stream holds, raw. */
async function storedMessages(): Promise<{ seq: number; data: Uint8Array }[]> {
  const jsm = await jetstreamManager(nc);
  const stream = namespaceNames(namespace).inboxStream;
  const { state } = await jsm.streams.info(stream);
  const out: { seq: number; data: Uint8Array }[] = [];
  for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq }).catch(() => undefined);
    if (m) out.push({ seq, data: m.data });
  }
  return out;
}

const text = (b: Uint8Array) => Buffer.from(b).toString("latin1");

describe("sealed agent traffic on NATS", () => {
  it("stores sealed frames in the inbox stream; the agent handles them; requests get their replies, sealed", async () => {
    const direct: Uint8Array[] = [];
    const sub = nc.subscribe(namespaceNames(namespace).clientSubject(client.clientId), {
      callback: (_err, m) => {
        direct.push(m.data);
      },
    });
    const receipt = await client.ref(notebook, "a").send({ type: "note", text: MARKER });
    await client.ref(relay, "r").send({ type: "pass", to: "a", text: `${MARKER}-relayed` });
    await waitFor("the relayed note", async () => {
      const r = await client.ref(notebook, "a").request<{ notes: string[] }>({ type: "read" });
      return r.notes.length === 2;
    });
    expect(await client.ref(notebook, "a").request({ type: "read" })).toEqual({
      type: "notes",
      notes: [MARKER, `${MARKER}-relayed`],
    });
    sub.unsubscribe();

    const stored = await storedMessages();
    const sent = stored.find((m) => m.seq === receipt.sequence);
    expect(sent).toBeDefined();
    // client → agent, client → agent, agent → agent, and the two reads: all sealed
    const senders = new Set<string>();
    for (const m of stored) {
      const { envelope, sealed } = peekEnvelope(m.data);
      expect(sealed, `inbox sequence ${m.seq}`).toBe(true);
      expect(envelope.channel).toBe("key:main");
      expect(text(m.data)).not.toContain(MARKER);
      senders.add(envelope.from.startsWith("~") ? "client" : envelope.from);
    }
    expect([...senders].sort()).toEqual(["client", "relay/r"]);
    // the replies over the client's direct subject too
    expect(direct.length).toBeGreaterThanOrEqual(2);
    for (const d of direct) {
      expect(peekEnvelope(d)).toMatchObject({ sealed: true, envelope: { kind: "reply" } });
      expect(text(d)).not.toContain(MARKER);
    }
    expect(await worker.parked()).toEqual([]);
  });

  it("replays an agent from its sealed history", async () => {
    const report = await worker.replay("notebook/a", { dryRun: true });
    const notes = report.steps.filter((s) => (s.event as { type: string }).type === "note");
    expect(notes.map((s) => (s.event as { text: string }).text)).toEqual([
      MARKER,
      `${MARKER}-relayed`,
    ]);
  });

  it("refuses a client without the key (CRYPTO_ERROR, parked); its request fails saying why", async () => {
    const outsider = await connect({ servers: ns.url, namespace, requestTimeoutMs: 10_000 });
    try {
      const err = await outsider
        .ref(notebook, "a")
        .request({ type: "read" })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TroupeError);
      expect((err as TroupeError).code).toBe(ErrorCode.CRYPTO_ERROR);
      expect((err as TroupeError).message).toContain(`sealed with key "main"`);
      await waitFor("the refused frame parked", async () =>
        (await worker.parked()).some((p) => p.code === ErrorCode.CRYPTO_ERROR),
      );
      const parked = (await worker.parked()).find((p) => p.code === ErrorCode.CRYPTO_ERROR)!;
      expect(parked.reason).toContain("is not sealed");
    } finally {
      await outsider.close();
    }
  });
});
