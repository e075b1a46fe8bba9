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
  /** Start pulling these shards. */
  ownShards(shards: readonly number[]): Promise<void>;
  /** Stop pulling; resolves once no more deliveries for them arrive. */
  releaseShards(shards: readonly number[]): Promise<void>;
  ownedShards(): number[];
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
  /** How often the members entry is put (ms). Default 1000. */
  heartbeatMs?: number;
  /** The cluster's lease (ms): an entry older than this is a dead worker. Default 3000. */
  leaseMs?: number;
  /** How long `leave()` waits for the leader to take every shard back (ms). Default 15,000. */
  leaveTimeoutMs?: number;
  /** The agent types this worker hosts (shown in its members entry). */
  agentTypes: readonly string[];
  logger?: Logger;
}

export interface Membership {
  readonly id: string;
  /** Shards this worker pulls from now. */
  ownedShards(): number[];
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
    this.#heartbeatMs = options.heartbeatMs ?? 1_000;
    this.#leaseMs = options.leaseMs ?? 3_000;
    if (!(this.#heartbeatMs >= 10)) {
      throw new TroupeError(ErrorCode.CONFIG_ERROR, "heartbeatMs must be >= 10");
    }
  }

  ownedShards(): number[] {
    return [...this.#owned].sort((a, b) => a - b);
  }

  async join(): Promise<void> {
    await this.#checkIdFree();
    await this.#beat();
    this.#heartbeat = setInterval(() => {
      if (this.#beating === undefined) void this.#beat();
    }, this.#heartbeatMs);
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
    return {
      id: this.id,
      shards: this.ownedShards(),
      activeAgents: stats.activeAgents,
      draining: this.#draining,
      stats: { ...stats },
    };
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
    const p = this.#buckets.members
      .put(this.id, encodeJson(this.#entry()))
      .then(
        () => {
          if (this.#beatFailures > 0) this.#log.info({}, "heartbeats are stored again");
          this.#beatFailures = 0;
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

  // --- assignment ------------------------------------------------------------------------

  #onAssignment(e: KvEntry): void {
    if (!isLive(e)) return;
    const a = decodeAssignment(e.value);
    if (a === undefined) {
      this.#log.error({ revision: e.revision }, "ignoring a malformed assignment");
      return;
    }
    if (this.#latest !== undefined && a.version < this.#latest.version) return;
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
    const confirm: Array<[shard: number, epoch: number]> = [];
    const own: number[] = [];
    a.shards.forEach((s, i) => {
      if (this.#owned.has(i) && s.owner !== this.id) release.push(i);
      if (s.owner === null && s.releasing === this.id && this.#confirmed.get(i) !== s.epoch) {
        confirm.push([i, s.epoch]);
      }
      if (s.owner === this.id && !this.#owned.has(i) && !this.#draining) own.push(i);
    });
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
      await this.#o.backend.ownShards(own);
      for (const s of own) this.#owned.add(s);
      this.#log.info({ shards: own, owned: this.#owned.size }, "pulling shards");
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
