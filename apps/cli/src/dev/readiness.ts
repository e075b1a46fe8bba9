/** When `troupe dev` calls the cluster ready. */

import type { ClusterStatus } from "../commands/status.js";

/** Ready when every worker of ours is live, all shards are owned and the split is even. */
export function readiness(
  status: ClusterStatus,
  ids: readonly string[],
): { done: true } | { text: string } {
  if (status.leader === null) return { text: "waiting for a leader" };
  const ours = status.workers.filter((w) => ids.includes(w.id) && !w.draining);
  if (ours.length < ids.length) {
    return { text: `${ours.length} of ${ids.length} workers joined` };
  }
  if (status.unassigned.length > 0) {
    const assigned = status.shardCount - status.unassigned.length;
    return { text: `${assigned} of ${status.shardCount} shards assigned` };
  }
  const counts = ours.map((w) => w.shards.length);
  const min = Math.min(...counts);
  const max = Math.max(...counts);
  if ((status.shardCount >= ids.length && min === 0) || max - min > 1) {
    return { text: `balancing shards (${counts.join("/")})` };
  }
  return { done: true };
}
