/** What the dev cluster's NATS already knows about a namespace (from an earlier run). */

import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";

/**
 * The shard count stored in `troupe_<ns>_cluster` / `config`, or undefined when the namespace
 * does not exist yet. The coordinator must be started with that count (it refuses another).
 */
export async function storedShardCount(
  nc: NatsConnection,
  namespace: string,
): Promise<number | undefined> {
  try {
    const kv = await new Kvm(nc).open(`troupe_${namespace}_cluster`);
    const entry = await kv.get("config");
    if (entry === null || entry.operation !== "PUT") return undefined;
    const count = (entry.json() as { shardCount?: unknown }).shardCount;
    return typeof count === "number" && Number.isSafeInteger(count) && count > 0
      ? count
      : undefined;
  } catch {
    return undefined;
  }
}
