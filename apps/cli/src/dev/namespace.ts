/** What the dev cluster's NATS already knows about a namespace (from an earlier run). */

import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { decodeShardCount } from "@troupe/coordinator/internal";
import { namespaceNames } from "@troupe/nats/internal";

/**
 * The shard count stored in `troupe_<ns>_cluster` / `config`, or undefined when the namespace
 * does not exist yet. The coordinator must be started with that count (it refuses another).
 */
export async function storedShardCount(
  nc: NatsConnection,
  namespace: string,
): Promise<number | undefined> {
  try {
    const names = namespaceNames(namespace);
    const kv = await new Kvm(nc).open(names.clusterBucket);
    const entry = await kv.get(names.configKey);
    if (entry === null || entry.operation !== "PUT") return undefined;
    return decodeShardCount(entry.value);
  } catch {
    return undefined;
  }
}
