/**
 * The leader's next assignment: pure, so handoffs, timeouts and dead workers can be tested
 * with a made-up clock. Placement (who should own what) is in placement.ts; this decides
 * how to get there per docs/cluster.md: unassigned and dead owners' shards at once, moves
 * by handoff (release, confirm, then assign) with a timeout.
 */
import { placeShards } from "./placement.js";
import type { MemberEntry, ReleaseConfirmation, ShardAssignment } from "./protocol.js";

export interface PlanInput {
  shards: readonly ShardAssignment[];
  /** The members entries the leader knows (alive or not). */
  members: Iterable<MemberEntry>;
  /** The latest `release.<shard>` confirmation, if any. */
  release(shard: number): ReleaseConfirmation | undefined;
  /** When the leader first saw each pending handoff (ms). */
  handoffSince: ReadonlyMap<number, number>;
  now: number;
  /** An entry whose heartbeat is older than this is a dead worker. */
  leaseMs: number;
  handoffTimeoutMs: number;
}

export interface PlanSummary {
  /** Unassigned shards given an owner. */
  assigned: number[];
  /** Shards whose owner was asked to release them. */
  handoffStarted: number[];
  /** Released (confirmed) shards given their new owner. */
  handedOff: number[];
  /** Shards assigned although their releasing worker did not confirm in time. */
  handoffTimedOut: number[];
  /** Shards of dead or departed workers, reassigned at once. */
  fromDeadOwner: number[];
}

export interface Plan {
  /** The next assignment's shards, or undefined when nothing has to change. */
  shards: ShardAssignment[] | undefined;
  summary: PlanSummary;
  /** When each handoff pending after this plan began (replaces the input map once applied). */
  handoffSince: Map<number, number>;
}

/** Workers whose heartbeat is within the lease. */
export function aliveMembers(members: Iterable<MemberEntry>, now: number, leaseMs: number) {
  const alive = new Map<string, MemberEntry>();
  for (const m of members) if (now - m.heartbeatAt <= leaseMs) alive.set(m.id, m);
  return alive;
}

export function planAssignment(input: PlanInput): Plan {
  const { shards, now } = input;
  const alive = aliveMembers(input.members, now, input.leaseMs);
  const live = [...alive.values()].filter((m) => !m.draining).map((m) => m.id);
  // dead owners count as no owner: their shards are free for placement
  const owners = shards.map((s) => (s.owner !== null && alive.has(s.owner) ? s.owner : null));
  const target = placeShards(owners, live);

  const next = shards.map((s) => ({ ...s }));
  const since = new Map<number, number>();
  const summary: PlanSummary = {
    assigned: [],
    handoffStarted: [],
    handedOff: [],
    handoffTimedOut: [],
    fromDeadOwner: [],
  };
  let changed = false;
  shards.forEach((s, i) => {
    const to = target[i] ?? null;
    if (s.owner !== null) {
      if (!alive.has(s.owner)) {
        // dead (lease expired) or gone (entry deleted): reassign at once
        next[i] = { owner: to, epoch: s.epoch + 1 };
        summary.fromDeadOwner.push(i);
        changed = true;
      } else if (to !== s.owner) {
        next[i] = { owner: null, epoch: s.epoch + 1, releasing: s.owner };
        since.set(i, now);
        summary.handoffStarted.push(i);
        changed = true;
      }
      return;
    }
    if (s.releasing !== undefined) {
      const started = input.handoffSince.get(i) ?? now;
      if (to === null) {
        since.set(i, started); // nowhere to put it yet
        return;
      }
      const c = input.release(i);
      const confirmed = c !== undefined && c.worker === s.releasing && c.epoch === s.epoch;
      const releaserAlive = alive.has(s.releasing);
      const timedOut = now - started >= input.handoffTimeoutMs;
      if (!confirmed && releaserAlive && !timedOut) {
        since.set(i, started);
        return;
      }
      if (confirmed) summary.handedOff.push(i);
      else if (releaserAlive) summary.handoffTimedOut.push(i);
      else summary.fromDeadOwner.push(i);
    } else {
      if (to === null) return;
      summary.assigned.push(i);
    }
    next[i] = { owner: to, epoch: s.epoch + 1 };
    changed = true;
  });
  return { shards: changed ? next : undefined, summary, handoffSince: since };
}

/** The non-empty lists of a summary, for a log line. */
export function compactSummary(summary: PlanSummary): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const [k, v] of Object.entries(summary)) if (v.length > 0) out[k] = v;
  return out;
}
