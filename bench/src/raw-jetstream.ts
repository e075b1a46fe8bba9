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
import type { NatsConnection } from "@nats-io/transport-node";

export async function rawJetStream(
  nc: NatsConnection,
  messages: number,
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
  const inflight: Promise<unknown>[] = [];
  for (let i = 0; i < messages; i++) {
    inflight.push(js.publish(`${subject}.${i % 100}`, payload, { msgID: `m${i}` }));
    if (inflight.length >= window) await Promise.all(inflight.splice(0));
  }
  await Promise.all(inflight);
  await done;
  const secs = (performance.now() - t0) / 1000;
  await jsm.streams.delete(stream);
  return messages / secs;
}
