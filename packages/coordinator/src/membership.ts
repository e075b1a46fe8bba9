/**
 * The worker's side of the cluster: heartbeats in the members bucket, following the
 * assignment (pull the shards it owns, give up the others and confirm), graceful leave.
 */
import { hostname } from "node:os";
import type { KvEntry } from "@nats-io/kv";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { shardOfAddress } from "@troupe/nats";
import { type Logger, type Runtime, silentLogger } from "@troupe/runtime";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { type ClusterBuckets, openClusterBuckets } from "./buckets.js";
import { type Follower, follow, isLive, sleep } from "./kv.js";
import {
  ASSIGNMENT_KEY,
  type Assignment,
  controlError,
  decodeAssignment,
  decodeLease,
  decodeMember,
  defaultNodeId,
  encodeJson,
  LEADER_KEY,
  type MemberEntry,
  type ReleaseConfirmation,
  releaseKey,
  validateNodeId,
  type WorkerStatus,
  workerControlSubject,
} from "./protocol.js";

/** What membership needs from the backend: pulling shards on and off (a NatsBackend does). */
export interface ShardOwner {
  /**
   * Start pulling these shards. `previousOwnerDead`: their last owner's lease ran out, so
   * what it left unacknowledged is taken back at once (not after ack_wait).
   */
  ownShards(shards: readonly number[], options?: { previousOwnerDead?: boolean }): Promise<void>;
  /** Stop pulling; resolves once no more deliveries for them arrive. */
  releaseShards(shards: readonly number[]): Promise<void>;
  /**
   * Stop acting for these shards at once: nothing more of theirs is stored or acknowledged
   * (the synchronous part of the call already guarantees that). Resolves once stopped.
   */
  fenceShards(shards: readonly number[]): Promise<void>;
  /** The lease check run before every delivery, acknowledgement and snapshot write. */
  setFence(fence: { leaseHeld(): boolean; onLapse(): void } | undefined): void;
  ownedShards(): number[];
  /** Counters shown in the worker's status (a NatsBackend's stats). */
  stats?(): object;
}

export interface JoinOptions {
  nc: NatsConnection;
  namespace: string;
  /** The backend the runtime runs on; its shard consumers are switched here. */
  backend: ShardOwner;
  /** The runtime hosting the agents (made by createRuntime on that backend). */
  runtime: Runtime;
  /** This worker's id (a subject token). Default: host name, pid and a random suffix. */
  id?: string;
  /** How often the members entry is put (ms). Default leaseMs / 4 (500). */
  heartbeatMs?: number;
  /**
   * The cluster's lease (ms): an entry older than this is a dead worker. Default 2000; must
   * be the coordinator's `leaseMs`. The worker fences itself (stops pulling, storing and
   * acknowledging) once its last stored heartbeat is `leaseMs - heartbeatMs` old, before
   * the leader can see it dead and give its shards away.
   */
  leaseMs?: number;
  /** How long `leave()` waits for the leader to take every shard back (ms). Default 15,000. */
  leaveTimeoutMs?: number;
  /** The agent types this worker hosts (shown in its members entry). */
  agentTypes: readonly string[];
  logger?: Logger;
}

/** A worker's standing in the cluster, as probes and metrics read it (`Membership.health`). */
export interface MembershipHealth {
  /** A graceful leave is under way (or done): shards are being handed back. */
  draining: boolean;
  /** The last stored heartbeat is young enough to act for its shards (not fenced by a lapse). */
  leaseHeld: boolean;
  /** Shards this worker pulls from now. */
  owned: number;
  /**
   * Shards the assignment gives this worker that it does not pull yet: being taken on, or
   * waiting a lease after a lapse before they are pulled again at the epoch they were fenced at.
   */
  pending: number;
  /** Times this worker fenced shards (its lease lapsed, or the assignment moved them on). */
  fences: number;
}

export interface Membership {
  readonly id: string;
  /** Shards this worker pulls from now. */
  ownedShards(): number[];
  /** Synchronous, no I/O: for readiness probes and metrics. */
  health(): MembershipHealth;
  /**
   * Graceful leave (SIGTERM): marks the entry draining, releases every shard as the leader
   * hands them off (confirming each), deletes the members entry. Does not shut the runtime.
   */
  leave(): Promise<void>;
}

/** What `passivateWhere` is on RuntimeCore (`@troupe/runtime/internal`). */
interface Passivating {
  passivateWhere(match: (address: string) => boolean): Promise<number>;
}

export async function joinCluster(options: JoinOptions): Promise<Membership> {
  const runtime = options.runtime as Runtime & Partial<Passivating>;
  if (typeof runtime.passivateWhere !== "function") {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      "joinCluster needs a runtime made by createRuntime (it passivates the agents of released shards)",
    );
  }
  const buckets = await openClusterBuckets(options.nc, options.namespace);
  const member = new WorkerMember(options, runtime as Runtime & Passivating, buckets);
  await member.join();
  return member;
}

class WorkerMember implements Membership {
  readonly id: string;
  readonly #o: JoinOptions;
  readonly #runtime: Runtime & Passivating;
  readonly #buckets: ClusterBuckets;
  readonly #log: Logger;
  readonly #heartbeatMs: number;
  readonly #leaseMs: number;
  /** Age of the last stored heartbeat at which this worker stops acting for its shards. */
  readonly #fenceAfterMs: number;
  /** heartbeatAt of the last heartbeat the server stored (0: none yet). */
  #lastBeatAt = 0;
  /** The lease lapsed and every shard was fenced; cleared by the next stored heartbeat. */
  #lapsed = false;
  /** Shards fenced at a lapse, by the epoch they had: not pulled again at that epoch before `#reownAfter`. */
  readonly #fencedAt = new Map<number, number>();
  #reownAfter = 0;
  #reownTimer: NodeJS.Timeout | undefined;
  #leaseTimer: NodeJS.Timeout | undefined;
  #fences = 0;
  /** The epoch each owned shard was taken at (its fencing token). */
  readonly #ownedEpoch = new Map<number, number>();
  /** Per shard: the owner seen in the assignment, and the one before it changed. */
  readonly #seenOwner = new Map<number, string | null>();
  readonly #previousOwner = new Map<number, string | null>();
  readonly #startedAt = Date.now();
  readonly #owned = new Set<number>();
  /** The epoch each shard's release was last confirmed at. */
  readonly #confirmed = new Map<number, number>();
  #latest: Assignment | undefined;
  #work: Promise<void> | undefined;
  #again = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #beating: Promise<void> | undefined;
  #beatFailures = 0;
  #watch: Follower | undefined;
  #sub: Subscription | undefined;
  #draining = false;
  #leaving: Promise<void> | undefined;
  #onProgress: (() => void) | undefined;

  constructor(options: JoinOptions, runtime: Runtime & Passivating, buckets: ClusterBuckets) {
    this.id = options.id ?? defaultNodeId(hostname(), process.pid);
    validateNodeId("worker", this.id);
    this.#o = options;
    this.#runtime = runtime;
    this.#buckets = buckets;
    this.#log = options.logger ?? silentLogger;
    this.#leaseMs = options.leaseMs ?? 2_000;
    this.#heartbeatMs = options.heartbeatMs ?? Math.max(10, Math.floor(this.#leaseMs / 4));
    if (!(this.#heartbeatMs >= 10)) {
      throw new TroupeError(ErrorCode.CONFIG_ERROR, "heartbeatMs must be >= 10");
    }
    if (!(this.#leaseMs >= 2 * this.#heartbeatMs)) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `leaseMs (${this.#leaseMs}) must be at least twice heartbeatMs (${this.#heartbeatMs})`,
      );
    }
    this.#fenceAfterMs = this.#leaseMs - this.#heartbeatMs;
  }

  ownedShards(): number[] {
    return [...this.#owned].sort((a, b) => a - b);
  }

  health(): MembershipHealth {
    let pending = 0;
    if (!this.#draining) {
      for (const [i, s] of (this.#latest?.shards ?? []).entries()) {
        if (s.owner === this.id && !this.#owned.has(i)) pending++;
      }
    }
    return {
      draining: this.#draining,
      leaseHeld: this.#leaseHeld(),
      owned: this.#owned.size,
      pending,
      fences: this.#fences,
    };
  }

  async join(): Promise<void> {
    await this.#checkIdFree();
    this.#o.backend.setFence({
      leaseHeld: () => this.#leaseHeld(),
      onLapse: () => this.#onLapse(),
    });
    await this.#beat();
    this.#heartbeat = setInterval(() => {
      if (this.#beating === undefined) void this.#beat();
    }, this.#heartbeatMs);
    // a heartbeat can hang (NATS trouble) longer than the lease: check on a timer as well
    this.#leaseTimer = setInterval(
      () => {
        if (!this.#leaseHeld()) this.#onLapse();
      },
      Math.max(10, Math.floor(this.#heartbeatMs / 2)),
    );
    this.#sub = this.#o.nc.subscribe(workerControlSubject(this.#o.namespace, this.id, "status"), {
      callback: (err, msg) => {
        if (err !== null) return;
        try {
          msg.respond(JSON.stringify(this.#status()));
        } catch (e) {
          msg.respond(JSON.stringify(controlError(e)));
        }
      },
    });
    this.#watch = follow(
      this.#buckets.cluster,
      { key: ASSIGNMENT_KEY },
      (e) => this.#onAssignment(e),
      this.#log,
      "the assignment",
    );
    await this.#watch.started;
    this.#log.info(
      { worker: this.id, namespace: this.#o.namespace, shardCount: this.#buckets.shardCount },
      "joined the cluster",
    );
  }

  leave(): Promise<void> {
    this.#leaving ??= this.#leave();
    return this.#leaving;
  }

  async #leave(): Promise<void> {
    this.#draining = true;
    this.#log.info(
      { worker: this.id, shards: this.ownedShards() },
      "draining: handing shards back",
    );
    await this.#beating;
    await this.#beat();
    const timeoutMs = this.#o.leaveTimeoutMs ?? 15_000;
    const outcome = await new Promise<"drained" | "timeout" | "no leader">((resolve) => {
      const done = (o: "drained" | "timeout" | "no leader") => {
        clearTimeout(timer);
        clearInterval(leaderCheck);
        this.#onProgress = undefined;
        resolve(o);
      };
      const timer = setTimeout(() => done("timeout"), timeoutMs);
      // with no coordinator nobody hands shards off: do not wait the whole timeout for one
      let leaderlessSince: number | undefined;
      const leaderCheck = setInterval(
        () => {
          void this.#leaderAlive().then((alive) => {
            if (alive) leaderlessSince = undefined;
            else if (leaderlessSince === undefined) leaderlessSince = Date.now();
            else if (Date.now() - leaderlessSince >= this.#leaseMs) done("no leader");
          });
        },
        Math.max(100, Math.min(this.#heartbeatMs, this.#leaseMs / 3)),
      );
      this.#onProgress = () => {
        if (this.#isDrained()) done("drained");
      };
      this.#onProgress();
      this.#kick();
    });
    this.#watch?.stop();
    await this.#work;
    clearTimeout(this.#retryTimer);
    if (outcome !== "drained") {
      this.#log.warn(
        { worker: this.id, shards: this.ownedShards(), timeoutMs, outcome },
        outcome === "timeout"
          ? "the leader did not take every shard back in time; releasing them unconfirmed"
          : "no coordinator holds the lease; releasing every shard unconfirmed",
      );
      await this.#releaseAll().catch((err) =>
        this.#log.error({ err }, "could not release every shard"),
      );
    }
    clearInterval(this.#heartbeat);
    clearInterval(this.#leaseTimer);
    clearTimeout(this.#reownTimer);
    await this.#beating;
    this.#sub?.unsubscribe();
    try {
      await this.#buckets.members.delete(this.id);
    } catch (err) {
      this.#log.warn({ err }, "could not delete the members entry; it expires with its lease");
    }
    this.#log.info({ worker: this.id }, "left the cluster");
  }

  #status(): WorkerStatus {
    const stats = this.#runtime.stats();
    const status: WorkerStatus = {
      id: this.id,
      shards: this.ownedShards(),
      activeAgents: stats.activeAgents,
      draining: this.#draining,
      stats: { ...stats },
      fences: this.#fences,
    };
    const backend = this.#o.backend.stats?.();
    if (backend !== undefined) status.backend = { ...(backend as Record<string, number>) };
    return status;
  }

  // --- fencing ---------------------------------------------------------------------------

  #leaseHeld(): boolean {
    return !this.#lapsed && Date.now() - this.#lastBeatAt < this.#fenceAfterMs;
  }

  /**
   * The lease may have run out (a pause, a stalled connection): the leader can give every
   * shard away now. Stop acting for all of them before anything more is stored or
   * acknowledged; they are pulled again only once a heartbeat is stored and the leader had
   * a lease to move them elsewhere (or at a newer epoch, if it gives them back).
   */
  #onLapse(): void {
    if (this.#lapsed) return;
    this.#lapsed = true;
    this.#fences++;
    const shards = this.ownedShards();
    for (const s of shards) {
      this.#fencedAt.set(s, this.#ownedEpoch.get(s) ?? 0);
      this.#owned.delete(s);
      this.#ownedEpoch.delete(s);
    }
    // synchronously fenced by the time this returns; the consumers stop in the background
    const stopped = this.#o.backend.fenceShards(shards);
    this.#log.warn(
      {
        worker: this.id,
        shards,
        lastHeartbeatAgeMs: this.#lastBeatAt === 0 ? null : Date.now() - this.#lastBeatAt,
        leaseMs: this.#leaseMs,
      },
      "lease lapsed: fenced every shard (no more snapshots or acknowledgements for them)",
    );
    void this.#dropActivations(shards, stopped);
  }

  /** Activations of fenced shards go without storing anything (the backend refuses it). */
  async #dropActivations(shards: number[], stopped: Promise<void>): Promise<void> {
    try {
      await stopped;
      if (shards.length === 0) return;
      const { shardCount } = this.#buckets;
      const set = new Set(shards);
      const dropped = await this.#runtime.passivateWhere((address) =>
        set.has(shardOfAddress(address, shardCount)),
      );
      this.#log.info({ shards, dropped }, "dropped the activations of fenced shards");
    } catch (err) {
      this.#log.error({ err }, "could not drop the activations of fenced shards");
    }
  }

  #fence(shards: number[], why: string): Promise<void> {
    for (const s of shards) {
      this.#owned.delete(s);
      this.#ownedEpoch.delete(s);
    }
    const stopped = this.#o.backend.fenceShards(shards);
    this.#fences++;
    this.#log.warn({ worker: this.id, shards }, `fenced shards: ${why}`);
    return this.#dropActivations(shards, stopped);
  }

  // --- heartbeat -------------------------------------------------------------------------

  #entry(): MemberEntry {
    return {
      id: this.id,
      pid: process.pid,
      host: hostname(),
      startedAt: this.#startedAt,
      heartbeatAt: Date.now(),
      agentTypes: [...this.#o.agentTypes],
      activeAgents: this.#runtime.stats().activeAgents,
      draining: this.#draining,
    };
  }

  #beat(): Promise<void> {
    if (this.#lastBeatAt > 0 && !this.#leaseHeld()) this.#onLapse();
    const entry = this.#entry();
    const p = this.#buckets.members
      .put(this.id, encodeJson(entry))
      .then(
        () => {
          if (this.#beatFailures > 0) this.#log.info({}, "heartbeats are stored again");
          this.#beatFailures = 0;
          // (the timer may not have run yet after a pause: check before moving the lease on)
          if (this.#lastBeatAt > 0 && !this.#leaseHeld()) this.#onLapse();
          if (entry.heartbeatAt > this.#lastBeatAt) this.#lastBeatAt = entry.heartbeatAt;
          if (this.#lapsed && Date.now() - entry.heartbeatAt < this.#fenceAfterMs) this.#regain();
        },
        (err: unknown) => {
          if (this.#beatFailures++ === 0) {
            this.#log.warn({ err }, "could not store a heartbeat; retrying");
          }
        },
      )
      .finally(() => {
        if (this.#beating === p) this.#beating = undefined;
      });
    this.#beating = p;
    return p;
  }

  /** Another live process under the same id would pull the same shards: refuse. */
  async #checkIdFree(): Promise<void> {
    const read = async (): Promise<MemberEntry | undefined> => {
      const e = await this.#buckets.members.get(this.id);
      return isLive(e) ? decodeMember(e.value) : undefined;
    };
    const first = await read();
    if (first === undefined || Date.now() - first.heartbeatAt > this.#leaseMs) return;
    this.#log.warn(
      { worker: this.id, pid: first.pid, host: first.host },
      "a members entry with this id is fresh; waiting for its lease to run out",
    );
    await sleep(this.#leaseMs + this.#heartbeatMs);
    const again = await read();
    if (again !== undefined && again.heartbeatAt !== first.heartbeatAt) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `worker id "${this.id}" is in use by a live worker (pid ${again.pid} on ${again.host})`,
      );
    }
  }

  /** A heartbeat is stored again after a lapse. */
  #regain(): void {
    this.#lapsed = false;
    // the leader may still move the fenced shards (it saw the lease run out); give it a
    // lease's time before pulling them again at the epoch they were fenced at
    this.#reownAfter = Date.now() + this.#leaseMs;
    this.#log.info(
      { worker: this.id, fenced: [...this.#fencedAt.keys()] },
      "heartbeats are stored again: the lease is held",
    );
    clearTimeout(this.#reownTimer);
    this.#reownTimer = setTimeout(() => this.#kick(), this.#leaseMs + 10);
    this.#kick();
  }

  // --- assignment ------------------------------------------------------------------------

  #onAssignment(e: KvEntry): void {
    if (!isLive(e)) return;
    const a = decodeAssignment(e.value);
    if (a === undefined) {
      this.#log.error({ revision: e.revision }, "ignoring a malformed assignment");
      return;
    }
    if (this.#latest !== undefined && a.version < this.#latest.version) return;
    a.shards.forEach((s, i) => {
      const owner = s.owner;
      if (this.#seenOwner.has(i) && this.#seenOwner.get(i) === owner) return;
      if (this.#seenOwner.has(i)) this.#previousOwner.set(i, this.#seenOwner.get(i) ?? null);
      this.#seenOwner.set(i, owner);
    });
    this.#latest = a;
    this.#kick();
  }

  #kick(): void {
    if (this.#work !== undefined) {
      this.#again = true;
      return;
    }
    this.#work = (async () => {
      do {
        this.#again = false;
        try {
          await this.#apply();
        } catch (err) {
          this.#log.error({ err }, "could not apply the assignment; retrying");
          clearTimeout(this.#retryTimer);
          this.#retryTimer = setTimeout(() => this.#kick(), 500);
        }
        this.#onProgress?.();
      } while (this.#again);
    })().finally(() => {
      this.#work = undefined;
    });
  }

  async #apply(): Promise<void> {
    const a = this.#latest;
    if (a === undefined) return;
    const { shardCount, cluster } = this.#buckets;
    if (a.shards.length !== shardCount) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `the assignment has ${a.shards.length} shards, the namespace ${shardCount}`,
      );
    }
    const release: number[] = [];
    const fence: number[] = [];
    const confirm: Array<[shard: number, epoch: number]> = [];
    const own: number[] = [];
    const now = Date.now();
    a.shards.forEach((s, i) => {
      // epochs are fencing tokens: a shard that moved on without a handoff through this
      // worker (it was taken for dead) or came back at another epoch has had another owner
      // meanwhile; what is held of it is stale and must not be stored
      if (this.#owned.has(i)) {
        if (s.owner === null && s.releasing === this.id) release.push(i);
        else if (s.owner !== this.id || s.epoch !== this.#ownedEpoch.get(i)) fence.push(i);
      }
      if (s.owner === null && s.releasing === this.id && this.#confirmed.get(i) !== s.epoch) {
        confirm.push([i, s.epoch]);
      }
      if (s.owner === this.id && !this.#draining && this.#leaseHeld()) {
        const fencedAt = this.#fencedAt.get(i);
        const mayOwn = fencedAt === undefined || s.epoch > fencedAt || now >= this.#reownAfter;
        if (mayOwn && (!this.#owned.has(i) || fence.includes(i))) own.push(i);
      }
    });
    if (fence.length > 0) await this.#fence(fence, "the assignment moved them on (epoch)");
    if (release.length > 0) await this.#release(release);
    if (confirm.length > 0) {
      await Promise.all(
        confirm.map(async ([shard, epoch]) => {
          const value: ReleaseConfirmation = { worker: this.id, epoch };
          await cluster.put(releaseKey(shard), encodeJson(value));
          this.#confirmed.set(shard, epoch);
        }),
      );
      this.#log.info({ shards: confirm.map(([s]) => s) }, "confirmed shard releases");
    }
    if (own.length > 0) {
      // a shard taken straight from another worker: that worker died holding messages
      const fromDead = own.filter((i) => {
        const before = this.#previousOwner.get(i);
        return (
          (before !== undefined && before !== null && before !== this.id) ||
          this.#fencedAt.has(i) ||
          fence.includes(i)
        );
      });
      const rest = own.filter((i) => !fromDead.includes(i));
      await Promise.all([
        fromDead.length > 0
          ? this.#o.backend.ownShards(fromDead, { previousOwnerDead: true })
          : undefined,
        rest.length > 0 ? this.#o.backend.ownShards(rest) : undefined,
      ]);
      for (const s of own) {
        this.#owned.add(s);
        this.#ownedEpoch.set(s, a.shards[s]!.epoch);
        this.#fencedAt.delete(s);
      }
      this.#log.info(
        { shards: own, fromDeadOwner: fromDead, owned: this.#owned.size },
        "pulling shards",
      );
    }
  }

  /** Stop pulling, finish and persist what is held, passivate those agents. */
  async #release(shards: number[]): Promise<void> {
    const { shardCount } = this.#buckets;
    await this.#o.backend.releaseShards(shards);
    for (const s of shards) this.#owned.delete(s);
    const set = new Set(shards);
    const passivated = await this.#runtime.passivateWhere((address) =>
      set.has(shardOfAddress(address, shardCount)),
    );
    // the acks of what was just finished reach the server before the confirmation does, so
    // the next owner does not find them still pending
    await this.#o.nc.flush();
    this.#log.info({ shards, passivated, owned: this.#owned.size }, "released shards");
  }

  async #releaseAll(): Promise<void> {
    const owned = this.ownedShards();
    if (owned.length > 0) await this.#release(owned);
    const a = this.#latest;
    if (a === undefined) return;
    await Promise.all(
      a.shards.map(async (s, i) => {
        if (s.owner !== null || s.releasing !== this.id || this.#confirmed.get(i) === s.epoch) {
          return;
        }
        await this.#buckets.cluster.put(
          releaseKey(i),
          encodeJson({ worker: this.id, epoch: s.epoch } satisfies ReleaseConfirmation),
        );
        this.#confirmed.set(i, s.epoch);
      }),
    );
  }

  /** Whether some coordinator holds an unexpired lease (read errors count as alive). */
  async #leaderAlive(): Promise<boolean> {
    try {
      const e = await this.#buckets.cluster.get(LEADER_KEY);
      const lease = isLive(e) ? decodeLease(e.value) : undefined;
      return lease !== undefined && lease.expiresAt > Date.now();
    } catch {
      return true;
    }
  }

  /** Nothing pulled, nothing assigned here, every handoff from here confirmed. */
  #isDrained(): boolean {
    if (this.#owned.size > 0) return false;
    const a = this.#latest;
    if (a === undefined) return true;
    return a.shards.every(
      (s, i) =>
        s.owner !== this.id && (s.releasing !== this.id || this.#confirmed.get(i) === s.epoch),
    );
  }
}
