import { describe, expect, it } from "vitest";
import { type PlanInput, planAssignment } from "../src/assignment.js";
import type { MemberEntry, ReleaseConfirmation, ShardAssignment } from "../src/protocol.js";

const LEASE = 3000;
const HANDOFF = 10_000;
const NOW = 1_000_000;

function member(id: string, opts: { age?: number; draining?: boolean } = {}): MemberEntry {
  return {
    id,
    pid: 1,
    host: "h",
    startedAt: 0,
    heartbeatAt: NOW - (opts.age ?? 0),
    agentTypes: [],
    activeAgents: 0,
    draining: opts.draining ?? false,
  };
}

const free = (n: number): ShardAssignment[] =>
  Array.from({ length: n }, () => ({ owner: null, epoch: 0 }));
const owned = (...owners: string[]): ShardAssignment[] =>
  owners.map((owner) => ({ owner, epoch: 1 }));

function plan(
  shards: ShardAssignment[],
  members: MemberEntry[],
  extra: Partial<Omit<PlanInput, "shards" | "members">> = {},
) {
  return planAssignment({
    shards,
    members,
    release: () => undefined,
    handoffSince: new Map(),
    now: NOW,
    leaseMs: LEASE,
    handoffTimeoutMs: HANDOFF,
    ...extra,
  });
}

describe("planAssignment", () => {
  it("assigns unassigned shards at once, epoch + 1, balanced", () => {
    const p = plan(free(4), [member("a"), member("b")]);
    expect(p.shards).toEqual([
      { owner: "a", epoch: 1 },
      { owner: "b", epoch: 1 },
      { owner: "a", epoch: 1 },
      { owner: "b", epoch: 1 },
    ]);
    expect(p.summary.assigned).toEqual([0, 1, 2, 3]);
  });

  it("changes nothing when the assignment is balanced over live workers", () => {
    const p = plan(owned("a", "b", "a", "b"), [member("a"), member("b")]);
    expect(p.shards).toBeUndefined();
    expect(p.handoffSince.size).toBe(0);
  });

  it("leaves shards unassigned without live workers", () => {
    expect(plan(free(3), []).shards).toBeUndefined();
    expect(plan(free(3), [member("old", { age: LEASE + 1 })]).shards).toBeUndefined();
  });

  it("join: moves shards by handoff (owner null, releasing, epoch + 1)", () => {
    const p = plan(owned("a", "a", "a", "a"), [member("a"), member("b")]);
    expect(p.summary.handoffStarted).toEqual([2, 3]);
    expect(p.shards).toEqual([
      { owner: "a", epoch: 1 },
      { owner: "a", epoch: 1 },
      { owner: null, epoch: 2, releasing: "a" },
      { owner: null, epoch: 2, releasing: "a" },
    ]);
    expect([...p.handoffSince]).toEqual([
      [2, NOW],
      [3, NOW],
    ]);
  });

  it("handoff: waits for the confirmation with the right worker and epoch, then epoch + 1", () => {
    const shards: ShardAssignment[] = [
      { owner: "a", epoch: 1 },
      { owner: null, epoch: 2, releasing: "a" },
    ];
    const members = [member("a"), member("b")];
    const handoffSince = new Map([[1, NOW - 100]]);
    const confirmations: Record<string, ReleaseConfirmation | undefined> = {
      none: undefined,
      stale: { worker: "a", epoch: 1 },
      other: { worker: "c", epoch: 2 },
      right: { worker: "a", epoch: 2 },
    };
    for (const [name, c] of Object.entries(confirmations)) {
      const p = plan(shards, members, { handoffSince, release: () => c });
      if (name === "right") {
        expect(p.shards?.[1]).toEqual({ owner: "b", epoch: 3 });
        expect(p.summary.handedOff).toEqual([1]);
        expect(p.handoffSince.has(1)).toBe(false);
      } else {
        expect(p.shards, name).toBeUndefined();
        expect(p.handoffSince.get(1)).toBe(NOW - 100);
      }
    }
  });

  it("handoff: assigns anyway after the timeout", () => {
    const shards: ShardAssignment[] = [
      { owner: "a", epoch: 1 },
      { owner: null, epoch: 2, releasing: "a" },
    ];
    const members = [member("a"), member("b")];
    const early = plan(shards, members, { handoffSince: new Map([[1, NOW - HANDOFF + 1]]) });
    expect(early.shards).toBeUndefined();
    const late = plan(shards, members, { handoffSince: new Map([[1, NOW - HANDOFF]]) });
    expect(late.shards?.[1]).toEqual({ owner: "b", epoch: 3 });
    expect(late.summary.handoffTimedOut).toEqual([1]);
  });

  it("handoff: a new leader starts the timeout when it first sees the handoff", () => {
    const shards: ShardAssignment[] = [
      { owner: "b", epoch: 1 },
      { owner: null, epoch: 2, releasing: "a" },
    ];
    const p = plan(shards, [member("a"), member("b")]);
    expect(p.shards).toBeUndefined();
    expect(p.handoffSince.get(1)).toBe(NOW);
  });

  it("handoff: assigns at once when the releasing worker is dead or gone", () => {
    const shards: ShardAssignment[] = [
      { owner: "b", epoch: 1 },
      { owner: null, epoch: 2, releasing: "a" },
    ];
    for (const members of [[member("b")], [member("a", { age: LEASE + 1 }), member("b")]]) {
      const p = plan(shards, members);
      expect(p.shards?.[1]).toEqual({ owner: "b", epoch: 3 });
      expect(p.summary.fromDeadOwner).toEqual([1]);
    }
  });

  it("dead: a dead owner's shards go to live workers at once, epoch + 1", () => {
    const p = plan(owned("a", "b", "a", "b"), [member("a"), member("b", { age: LEASE + 1 })]);
    expect(p.shards).toEqual([
      { owner: "a", epoch: 1 },
      { owner: "a", epoch: 2 },
      { owner: "a", epoch: 1 },
      { owner: "a", epoch: 2 },
    ]);
    expect(p.summary.fromDeadOwner).toEqual([1, 3]);
  });

  it("dead: with nobody alive the shards become unassigned", () => {
    const p = plan(owned("a", "a"), [member("a", { age: LEASE + 1 })]);
    expect(p.shards).toEqual([
      { owner: null, epoch: 2 },
      { owner: null, epoch: 2 },
    ]);
  });

  it("draining: every shard of a draining worker is handed off", () => {
    const p = plan(owned("a", "b", "a", "b"), [member("a", { draining: true }), member("b")]);
    expect(p.summary.handoffStarted).toEqual([0, 2]);
    expect(p.shards?.[0]).toEqual({ owner: null, epoch: 2, releasing: "a" });
  });

  it("draining: with no worker to take them, released shards wait", () => {
    const shards: ShardAssignment[] = [{ owner: null, epoch: 2, releasing: "a" }];
    const p = plan(shards, [member("a", { draining: true })], {
      release: () => ({ worker: "a", epoch: 2 }),
    });
    expect(p.shards).toBeUndefined();
    expect(p.handoffSince.has(0)).toBe(true);
  });
});
