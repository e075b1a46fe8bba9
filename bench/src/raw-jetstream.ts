/**
 * The physical limit for durable messaging on a server: raw nats.js JetStream
 * publish → consume → ack, 256 B payloads, with the same dedup ids and file storage Troupe
 * uses, and a publish window like Troupe's senders.
 */
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  StorageType,
} from "@nats-io/jetstream";
import { createInbox, headers, type NatsConnection } from "@nats-io/transport-node";

/**
 * How the publishes are made: `js.publish` (a nats.js request per message, the API its docs
 * show) or `core` — plain `nc.publish` with a reply subject under one wildcard subscription
 * that counts the PubAcks, the technique Troupe's backend uses (see packages/nats/src/puback.ts).
 */
export type RawPublish = "js" | "core";

export async function rawJetStream(
  nc: NatsConnection,
  messages: number,
  publish: RawPublish = "js",
  window = 2_000,
): Promise<number> {
  const jsm = await jetstreamManager(nc);
  const stream = `RAW_BENCH_${Date.now()}`;
  const subject = `rawbench.${stream}`;
  await jsm.streams.add({
    name: stream,
    subjects: [`${subject}.>`],
    storage: StorageType.File,
    duplicate_window: 120_000_000_000,
  });
  await jsm.consumers.add(stream, {
    durable_name: "c",
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    max_ack_pending: 10_000,
  });
  const js = jetstream(nc);
  const payload = new Uint8Array(256).fill(7);
  const consumer = await js.consumers.get(stream, "c");
  const t0 = performance.now();
  let acked = 0;
  const done = (async () => {
    const msgs = await consumer.consume({ max_messages: 1_000 });
    for await (const m of msgs) {
      m.ack();
      if (++acked === messages) break;
    }
  })();
  if (publish === "js") {
    const inflight: Promise<unknown>[] = [];
    for (let i = 0; i < messages; i++) {
      inflight.push(js.publish(`${subject}.${i % 100}`, payload, { msgID: `m${i}` }));
      if (inflight.length >= window) await Promise.all(inflight.splice(0));
    }
    await Promise.all(inflight);
  } else {
    await corePublish(nc, subject, payload, messages, window);
  }
  await done;
  const secs = (performance.now() - t0) / 1000;
  await jsm.streams.delete(stream);
  return messages / secs;
}

/** Publishes with `nc.publish` and a reply inbox; waits for every PubAck, `window` at a time. */
async function corePublish(
  nc: NatsConnection,
  subject: string,
  payload: Uint8Array,
  messages: number,
  window: number,
): Promise<void> {
  const inbox = createInbox();
  let acked = 0;
  let failed: Error | undefined;
  let wake: (() => void) | undefined;
  const sub = nc.subscribe(`${inbox}.*`, {
    callback: (_err, m) => {
      const r = JSON.parse(new TextDecoder().decode(m.data)) as { error?: { description: string } };
      if (r.error !== undefined) failed ??= new Error(r.error.description);
      acked++;
      wake?.();
    },
  });
  const waitFor = async (n: number) => {
    while (acked < n && failed === undefined) {
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
    }
    if (failed !== undefined) throw failed;
  };
  for (let i = 0; i < messages; i++) {
    const h = headers();
    h.set("Nats-Msg-Id", `m${i}`);
    nc.publish(`${subject}.${i % 100}`, payload, { reply: `${inbox}.${i}`, headers: h });
    if (i + 1 - acked >= window) await waitFor(i + 1);
  }
  await waitFor(messages);
  sub.unsubscribe();
}
