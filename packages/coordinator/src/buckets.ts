/** Opens the namespace's cluster and members buckets (created by `ensureNamespace`). */
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { namespaceNames } from "@troupe/nats/internal";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { CONFIG_KEY, decodeShardCount } from "./protocol.js";

export interface ClusterBuckets {
  /** `troupe_<ns>_cluster`: config, leader, assignment, release.<shard> */
  cluster: KV;
  /** `troupe_<ns>_members`: one entry per worker */
  members: KV;
  shardCount: number;
}

export async function openClusterBuckets(
  nc: NatsConnection,
  namespace: string,
): Promise<ClusterBuckets> {
  const names = namespaceNames(namespace);
  const kvm = new Kvm(nc);
  let cluster: KV;
  let members: KV;
  try {
    [cluster, members] = await Promise.all([
      kvm.open(names.clusterBucket),
      kvm.open(names.membersBucket),
    ]);
  } catch (e) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `namespace "${namespace}" has no cluster buckets (run ensureNamespace first): ${String(e)}`,
      { cause: e },
    );
  }
  const entry = await cluster.get(CONFIG_KEY).catch((e: unknown) => {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `cannot read the config of namespace "${namespace}" (run ensureNamespace first): ${String(e)}`,
      { cause: e },
    );
  });
  const shardCount =
    entry === null || entry.operation !== "PUT" ? undefined : decodeShardCount(entry.value);
  if (shardCount === undefined) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `namespace "${namespace}" has no valid config record (run ensureNamespace first)`,
    );
  }
  return { cluster, members, shardCount };
}
