/**
 * The coordinator: leader election through a lease in the cluster bucket, and, while leader,
 * shard assignment with handoffs and the `ctl.status` control API (docs/cluster.md).
 */
import { hostname } from "node:os";
import type { KvEntry } from "@nats-io/kv";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { type Logger, silentLogger } from "@troupe/runtime";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { compactSummary, planAssignment } from "./assignment.js";
import { type ClusterBuckets, openClusterBuckets } from "./buckets.js";
import {
  type Follower,
  follow,
  isCasConflict,
  isLive,
  readAll,
  type Tracked,
  track,
} from "./kv.js";
import {
  ASSIGNMENT_KEY,
  type Assignment,
  buildClusterStatus,
  type ClusterStatus,
  CONTROL_QUEUE,
  controlError,
  controlSubject,
  decodeAssignment,
  decodeLease,
  decodeMember,
  decodeRelease,
  defaultNodeId,
  encodeJson,
  LEADER_KEY,
  type LeaderLease,
  type MemberEntry,
  RELEASE_PREFIX,
  type ReleaseConfirmation,
  releaseKey,
  type ShardAssignment,
  validateNodeId,
} from "./protocol.js";
import { serveQuarantineControl } from "./quarantine.js";

export interface CoordinatorOptions {
  nc: NatsConnection;
  namespace: string;
  /** This coordinator's id (a subject token). Default: host name, pid and a random suffix. */
  id?: string;
  /** Lease length (ms): leadership and worker liveness. Renewed every leaseMs / 3. Default 2000. */
  leaseMs?: number;
  /** How long a handoff waits for the releasing worker's confirmation (ms). Default 10,000. */
  handoffTimeoutMs?: number;
  logger?: Logger;
}

export interface Coordinator {
  readonly id: string;
  /** Opens the buckets and starts competing for the lease. */
  start(): Promise<void>;
  /** Stops; a leader steps down (deletes its lease) so a standby takes over at once. */
  stop(): Promise<void>;
  /** True while this coordinator holds an unexpired lease. */
  readonly isLeader: boolean;
  /** The cluster as this coordinator sees it (a standby reads the buckets). */
  status(): Promise<ClusterStatus>;
  /** Synchronous, no I/O: for readiness probes and metrics. */
  health(): CoordinatorHealth;
}

/** A coordinator's own state, as probes and metrics read it (`Coordinator.health`). */
export interface CoordinatorHealth {
  /** Started and not stopped. */
  running: boolean;
  leader: boolean;
  /**
   * Lease rounds (take, renew or check the lease) that failed in a row, e.g. JetStream
   * unavailable: a standby that cannot read the lease cannot take over.
   */
  failedLeaseRounds: number;
}

interface HeldLease {
  revision: number;
  expiresAt: number;
  /** The revision the lease was taken at: the leader's term. */
  term: number;
}

interface StoredAssignment {
  value: Assignment;
  revision: number;
}

export function createCoordinator(options: CoordinatorOptions): Coordinator {
  return new CoordinatorNode(options);
}

class CoordinatorNode implements Coordinator {
  readonly id: string;
  readonly #nc: NatsConnection;
  readonly #namespace: string;
  readonly #leaseMs: number;
  readonly #handoffTimeoutMs: number;
  readonly #log: Logger;
  #buckets: ClusterBuckets | undefined;
  #running = false;
  #lease: HeldLease | undefined;
  #leaseTimer: NodeJS.Timeout | undefined;
  #leaseWork: Promise<void> | undefined;
  #leaseAgain = false;
  #leaderWatch: Follower | undefined;
  #duty: LeaderDuty | undefined;
  #failedLeaseRounds = 0;

  constructor(options: CoordinatorOptions) {
    this.id = options.id ?? defaultNodeId(hostname(), process.pid);
    validateNodeId("coordinator", this.id);
    this.#nc = options.nc;
    this.#namespace = options.namespace;
    this.#leaseMs = options.leaseMs ?? 2_000;
    this.#handoffTimeoutMs = options.handoffTimeoutMs ?? 10_000;
    if (!(this.#leaseMs >= 30)) {
      throw new TroupeError(ErrorCode.CONFIG_ERROR, `leaseMs must be >= 30, got ${this.#leaseMs}`);
    }
    if (!(this.#handoffTimeoutMs >= 0)) {
      throw new TroupeError(ErrorCode.CONFIG_ERROR, "handoffTimeoutMs must be >= 0");
    }
    this.#log = options.logger ?? silentLogger;
  }

  get isLeader(): boolean {
    return this.#holdsLease();
  }

  health(): CoordinatorHealth {
    return {
      running: this.#running,
      leader: this.#holdsLease(),
      failedLeaseRounds: this.#failedLeaseRounds,
    };
  }

  /** Stop acting a little before the lease ends, so a standby never overlaps with us. */
  #holdsLease(): boolean {
    const lease = this.#lease;
    return lease !== undefined && Date.now() < lease.expiresAt - Math.min(500, this.#leaseMs / 10);
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#buckets = await openClusterBuckets(this.#nc, this.#namespace);
    this.#running = true;
    const { cluster } = this.#buckets;
    this.#leaderWatch = follow(
      cluster,
      { key: LEADER_KEY },
      (e) => this.#onLeaderEntry(e),
      this.#log,
      "the leader lease",
    );
    await this.#leaderWatch.started;
    this.#log.info(
      { coordinator: this.id, namespace: this.#namespace, shardCount: this.#buckets.shardCount },
      "coordinator started; competing for the lease",
    );
    this.#kickLease();
    await this.#leaseWork;
  }

  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearTimeout(this.#leaseTimer);
    this.#leaderWatch?.stop();
    await this.#leaseWork;
    const lease = this.#lease;
    await this.#endDuty();
    this.#lease = undefined;
    if (lease !== undefined && this.#buckets !== undefined) {
      try {
        // only our own lease: if someone took it over meanwhile, this is a CAS conflict
        await this.#buckets.cluster.delete(LEADER_KEY, { previousSeq: lease.revision });
        this.#log.info({ coordinator: this.id }, "stepped down");
      } catch (err) {
        if (!isCasConflict(err)) this.#log.warn({ err }, "could not delete the lease on stop");
      }
    }
  }

  async status(): Promise<ClusterStatus> {
    const buckets = this.#buckets;
    if (buckets === undefined) {
      throw new TroupeError(ErrorCode.INVALID_STATE, "the coordinator is not started");
    }
    if (this.#duty !== undefined && this.#lease !== undefined && this.#holdsLease()) {
      return this.#duty.status(this.id, this.#lease);
    }
    return readClusterStatus(buckets, this.#namespace);
  }

  // --- the lease -------------------------------------------------------------------------

  #onLeaderEntry(e: KvEntry): void {
    if (!this.#running) return;
    if (!isLive(e)) {
      // stepped down: compete at once rather than at the next tick
      if (this.#lease === undefined) this.#kickLease();
      return;
    }
    const lease = decodeLease(e.value);
    if (this.#lease !== undefined && lease !== undefined && lease.id !== this.id) {
      this.#lose(`coordinator ${lease.id} holds the lease now`);
    }
  }

  /** Runs a lease round now (or right after the one in progress). */
  #kickLease(): void {
    if (!this.#running) return;
    if (this.#leaseWork !== undefined) {
      this.#leaseAgain = true;
      return;
    }
    clearTimeout(this.#leaseTimer);
    this.#leaseWork = (async () => {
      do {
        this.#leaseAgain = false;
        try {
          await this.#leaseRound();
          this.#failedLeaseRounds = 0;
        } catch (err) {
          this.#failedLeaseRounds++;
          this.#log.warn({ err }, "lease round failed");
        }
      } while (this.#leaseAgain && this.#running);
    })().finally(() => {
      this.#leaseWork = undefined;
      if (this.#running) {
        this.#leaseTimer = setTimeout(() => this.#kickLease(), this.#leaseMs / 3);
      }
    });
  }

  async #leaseRound(): Promise<void> {
    const { cluster } = this.#buckets!;
    const held = this.#lease;
    if (held !== undefined) {
      if (!this.#holdsLease()) {
        this.#lose("the lease expired before it could be renewed");
        return;
      }
      const expiresAt = Date.now() + this.#leaseMs;
      const value: LeaderLease = { id: this.id, expiresAt, term: held.term };
      try {
        const revision = await cluster.update(LEADER_KEY, encodeJson(value), held.revision);
        if (this.#lease === held) this.#lease = { ...held, revision, expiresAt };
      } catch (err) {
        if (isCasConflict(err)) this.#lose("the lease was taken over");
        else this.#log.warn({ err }, "could not renew the lease; retrying");
      }
      return;
    }
    if (!this.#running) return;
    const entry = await cluster.get(LEADER_KEY);
    const now = Date.now();
    const expiresAt = now + this.#leaseMs;
    const value = encodeJson({ id: this.id, expiresAt } satisfies LeaderLease);
    let revision: number;
    try {
      if (!isLive(entry)) {
        revision = await cluster.create(LEADER_KEY, value);
      } else {
        const current = decodeLease(entry.value);
        // even our own unexpired lease (from before a restart, or one we could not renew)
        // waits: a process with the same id may still be acting on it
        if (current !== undefined && current.expiresAt > now) return;
        revision = await cluster.update(LEADER_KEY, value, entry.revision);
        this.#log.info(
          { previous: current?.id, expiredMsAgo: current && now - current.expiresAt },
          "taking over an expired lease",
        );
      }
    } catch (err) {
      if (isCasConflict(err)) return; // another coordinator was faster
      throw err;
    }
    if (!this.#running) {
      await cluster.delete(LEADER_KEY, { previousSeq: revision }).catch(() => {});
      return;
    }
    this.#lease = { revision, expiresAt, term: revision };
    this.#log.info({ coordinator: this.id, term: revision }, "became leader");
    this.#startDuty();
  }

  #lose(reason: string): void {
    if (this.#lease === undefined) return;
    this.#log.warn({ coordinator: this.id, reason }, "lost the leadership");
    this.#lease = undefined;
    void this.#endDuty();
  }

  #startDuty(): void {
    const duty: LeaderDuty = new LeaderDuty({
      nc: this.#nc,
      buckets: this.#buckets!,
      namespace: this.#namespace,
      leaseMs: this.#leaseMs,
      handoffTimeoutMs: this.#handoffTimeoutMs,
      log: this.#log,
      holdsLease: () => this.#holdsLease(),
      statusOf: (): Promise<ClusterStatus> =>
        this.#lease === undefined
          ? Promise.reject(new TroupeError(ErrorCode.INVALID_STATE, "not the leader"))
          : Promise.resolve(duty.status(this.id, this.#lease)),
    });
    this.#duty = duty;
    duty.start().catch((err: unknown) => {
      this.#log.error({ err }, "could not start leading; stepping down");
      this.#lose("leader duties failed to start");
    });
  }

  async #endDuty(): Promise<void> {
    const duty = this.#duty;
    this.#duty = undefined;
    await duty?.stop();
  }
}

/** Builds the status from the buckets: what a standby (or any reader) can know. */
export async function readClusterStatus(
  buckets: ClusterBuckets,
  namespace: string,
): Promise<ClusterStatus> {
  const [leaderEntry, assignmentEntry, memberEntries] = await Promise.all([
    buckets.cluster.get(LEADER_KEY),
    buckets.cluster.get(ASSIGNMENT_KEY),
    readAll(buckets.members),
  ]);
  const lease = isLive(leaderEntry) ? decodeLease(leaderEntry.value) : undefined;
  const assignment = isLive(assignmentEntry) ? decodeAssignment(assignmentEntry.value) : undefined;
  const members: MemberEntry[] = [];
  for (const e of memberEntries) {
    const m = decodeMember(e.value);
    if (m !== undefined) members.push(m);
  }
  return buildClusterStatus({
    namespace,
    shardCount: buckets.shardCount,
    lease,
    epoch: lease === undefined ? 0 : (lease.term ?? leaderEntry!.revision),
    assignment,
    members,
    now: Date.now(),
  });
}

interface DutyOptions {
  nc: NatsConnection;
  buckets: ClusterBuckets;
  namespace: string;
  leaseMs: number;
  handoffTimeoutMs: number;
  log: Logger;
  holdsLease(): boolean;
  statusOf(): Promise<ClusterStatus>;
}

/**
 * When the leader counts a member's heartbeat as made, on its own clock. A heartbeat it sees
 * arrive counts from its arrival: the worker's `heartbeatAt` is the worker's clock, and a
 * worker whose clock ran behind looked dead however often it beat (ahead: a dead one looked
 * alive for as long). The worker fences itself by its own clock from the same beats, and a
 * beat arrives after it was stored, so it always stops before the leader hands its shards
 * on. Entries already there when the leader starts can only be judged by their stamp, never
 * later than now.
 */
function seenAt(m: MemberEntry, arrivedNow: boolean): number {
  const now = Date.now();
  return arrivedNow ? now : Math.min(m.heartbeatAt, now);
}

/** What the leader does while it leads: follow members and releases, assign, answer status. */
class LeaderDuty {
  readonly #o: DutyOptions;
  readonly #members = new Map<string, Tracked<MemberEntry>>();
  readonly #releases = new Map<string, Tracked<ReleaseConfirmation>>();
  /** When this leader first saw each pending handoff (ms). */
  #handoffSince: ReadonlyMap<number, number> = new Map();
  readonly #forgetting = new Set<string>();
  #assignment: StoredAssignment | undefined;
  #followers: Follower[] = [];
  #sub: Subscription | undefined;
  /** ctl.quarantine, ctl.release, ctl.quarantined (quarantine.ts). */
  #quarantineSubs: Subscription[] = [];
  #ticker: NodeJS.Timeout | undefined;
  #kickTimer: NodeJS.Timeout | undefined;
  #work: Promise<void> | undefined;
  #again = false;
  #ready = false;
  #stopped = false;

  constructor(options: DutyOptions) {
    this.#o = options;
  }

  async start(): Promise<void> {
    const { cluster, members } = this.#o.buckets;
    // watch first, then read: nothing that changes in between is missed (revisions decide)
    this.#followers.push(
      follow(
        members,
        {},
        (e) => {
          const m = isLive(e) ? decodeMember(e.value) : undefined;
          if (m !== undefined) m.heartbeatAt = seenAt(m, e.isUpdate);
          const before = this.#members.get(e.key)?.value;
          if (track(this.#members, e.key, e.revision, m) && this.#changesLiveness(before, m)) {
            this.#kick();
          }
        },
        this.#o.log,
        "the members bucket",
      ),
      follow(
        cluster,
        { key: `${RELEASE_PREFIX}>` },
        (e) => {
          const r = isLive(e) ? decodeRelease(e.value) : undefined;
          if (track(this.#releases, e.key, e.revision, r)) this.#kick();
        },
        this.#o.log,
        "release confirmations",
      ),
    );
    await Promise.all(this.#followers.map((f) => f.started));
    const [memberEntries, releaseEntries, assignment] = await Promise.all([
      readAll(members),
      readAll(cluster, `${RELEASE_PREFIX}>`),
      this.#loadAssignment(),
    ]);
    if (this.#stopped) return;
    for (const e of memberEntries) {
      const m = decodeMember(e.value);
      if (m !== undefined) m.heartbeatAt = seenAt(m, false);
      track(this.#members, e.key, e.revision, m);
    }
    for (const e of releaseEntries)
      track(this.#releases, e.key, e.revision, decodeRelease(e.value));
    this.#assignment = assignment;
    this.#sub = this.#o.nc.subscribe(controlSubject(this.#o.namespace, "status"), {
      queue: CONTROL_QUEUE,
      callback: (err, msg) => {
        if (err !== null) return;
        this.#o.statusOf().then(
          (s) => msg.respond(JSON.stringify(s)),
          (e: unknown) => msg.respond(JSON.stringify(controlError(e))),
        );
      },
    });
    this.#quarantineSubs = serveQuarantineControl({
      nc: this.#o.nc,
      namespace: this.#o.namespace,
      shardCount: this.#o.buckets.shardCount,
      log: this.#o.log,
      assignment: () => this.#assignment?.value,
      members: () => {
        const out: MemberEntry[] = [];
        for (const t of this.#members.values()) if (t.value !== undefined) out.push(t.value);
        return out;
      },
    });
    this.#ready = true;
    const tickMs = Math.max(20, Math.min(250, this.#o.leaseMs / 6));
    this.#ticker = setInterval(() => this.#kick(0), tickMs);
    this.#kick(0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#ready = false;
    clearInterval(this.#ticker);
    clearTimeout(this.#kickTimer);
    for (const f of this.#followers) f.stop();
    this.#followers = [];
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    for (const s of this.#quarantineSubs) s.unsubscribe();
    this.#quarantineSubs = [];
    await this.#work;
  }

  status(leaderId: string, lease: HeldLease): ClusterStatus {
    const members: MemberEntry[] = [];
    for (const t of this.#members.values()) if (t.value !== undefined) members.push(t.value);
    return buildClusterStatus({
      namespace: this.#o.namespace,
      shardCount: this.#o.buckets.shardCount,
      lease: { id: leaderId, expiresAt: lease.expiresAt },
      epoch: lease.term,
      assignment: this.#assignment?.value,
      members,
      now: Date.now(),
    });
  }

  /** A heartbeat alone changes nothing; joining, leaving and draining do. */
  #changesLiveness(before: MemberEntry | undefined, after: MemberEntry | undefined): boolean {
    return before === undefined || after === undefined || before.draining !== after.draining;
  }

  async #loadAssignment(): Promise<StoredAssignment | undefined> {
    const e = await this.#o.buckets.cluster.get(ASSIGNMENT_KEY);
    if (!isLive(e)) return undefined;
    const value = decodeAssignment(e.value);
    if (value === undefined) {
      throw new TroupeError(ErrorCode.INVALID_STATE, "the assignment record is malformed");
    }
    return { value, revision: e.revision };
  }

  /** Reconciles soon; kicks close together share one round. */
  #kick(delayMs = 5): void {
    if (this.#stopped || !this.#ready) return;
    if (this.#work !== undefined) {
      this.#again = true;
      return;
    }
    if (delayMs > 0) {
      if (this.#kickTimer === undefined) {
        this.#kickTimer = setTimeout(() => {
          this.#kickTimer = undefined;
          this.#kick(0);
        }, delayMs);
      }
      return;
    }
    this.#work = (async () => {
      do {
        this.#again = false;
        try {
          await this.#reconcile();
        } catch (err) {
          this.#o.log.warn({ err }, "assignment round failed; retrying");
          this.#assignment = undefined;
        }
      } while (this.#again && !this.#stopped);
    })().finally(() => {
      this.#work = undefined;
    });
  }

  async #reconcile(): Promise<void> {
    if (this.#stopped || !this.#o.holdsLease()) return;
    const { cluster, shardCount } = this.#o.buckets;
    this.#assignment ??= await this.#loadAssignment();
    if (this.#assignment === undefined) {
      const initial: Assignment = {
        version: 1,
        shards: Array.from({ length: shardCount }, () => ({ owner: null, epoch: 0 })),
      };
      try {
        const revision = await cluster.create(ASSIGNMENT_KEY, encodeJson(initial));
        this.#assignment = { value: initial, revision };
      } catch (err) {
        if (!isCasConflict(err)) throw err;
        this.#again = true;
        return;
      }
    }
    const current = this.#assignment;
    if (current.value.shards.length !== shardCount) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `the assignment has ${current.value.shards.length} shards, the namespace ${shardCount}`,
      );
    }
    const now = Date.now();
    const members: MemberEntry[] = [];
    for (const t of this.#members.values()) if (t.value !== undefined) members.push(t.value);
    const plan = planAssignment({
      shards: current.value.shards,
      members,
      release: (shard) => this.#releases.get(releaseKey(shard))?.value,
      handoffSince: this.#handoffSince,
      now,
      leaseMs: this.#o.leaseMs,
      handoffTimeoutMs: this.#o.handoffTimeoutMs,
    });
    this.#forgetDead(plan.shards ?? current.value.shards, now);
    if (plan.shards === undefined) {
      this.#handoffSince = plan.handoffSince;
      return;
    }
    if (this.#stopped || !this.#o.holdsLease()) return;
    const value: Assignment = { version: current.value.version + 1, shards: plan.shards };
    try {
      const revision = await cluster.update(ASSIGNMENT_KEY, encodeJson(value), current.revision);
      this.#assignment = { value, revision };
      this.#handoffSince = plan.handoffSince;
    } catch (err) {
      if (!isCasConflict(err)) throw err;
      this.#o.log.warn({}, "the assignment changed under the leader; reading it again");
      this.#assignment = undefined;
      this.#again = true;
      return;
    }
    if (plan.summary.handoffTimedOut.length > 0) {
      this.#o.log.warn(
        { shards: plan.summary.handoffTimedOut, timeoutMs: this.#o.handoffTimeoutMs },
        "handoff not confirmed in time; assigned anyway",
      );
    }
    this.#o.log.info(
      { version: value.version, ...compactSummary(plan.summary) },
      "assignment updated",
    );
  }

  /**
   * Deletes the members entries of workers dead for long (a crashed worker never deletes
   * its own), so status stops listing them. Compare-and-set: a worker that comes back wins.
   */
  #forgetDead(shards: readonly ShardAssignment[], now: number): void {
    const forgetAfter = Math.max(10 * this.#o.leaseMs, 30_000);
    for (const [key, t] of this.#members) {
      const m = t.value;
      if (m === undefined || now - m.heartbeatAt < forgetAfter) continue;
      if (shards.some((s) => s.owner === m.id || s.releasing === m.id)) continue;
      if (this.#forgetting.has(key)) continue;
      this.#forgetting.add(key);
      this.#o.buckets.members
        .delete(key, { previousSeq: t.revision })
        .then(
          () => this.#o.log.info({ worker: m.id }, "forgot a long-dead worker"),
          (err: unknown) => {
            if (!isCasConflict(err)) this.#o.log.debug({ err }, "could not forget a dead worker");
          },
        )
        .finally(() => this.#forgetting.delete(key));
    }
  }
}
