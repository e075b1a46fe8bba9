/**
 * The JetStream backend: the runtime's Backend over one NATS connection. Appends go to the
 * inbox stream with the message id as `Nats-Msg-Id` (dedup), shard consumers deliver in
 * stream order, snapshots and the quarantine registry live in KV buckets, parked frames in
 * the parked stream, replies travel on core NATS subjects.
 */

import {
  type ConsumerMessages,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
  type PubAck,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import {
  Match,
  type MsgHdrs,
  type NatsConnection,
  headers as natsHeaders,
  type Subscription,
} from "@nats-io/transport-node";
import type {
  AppendResult,
  Backend,
  BackendHandlers,
  Delivery,
  HeldMessage,
  Logger,
  Outgoing,
  ParkedFrame,
  ParkingLot,
  QuarantineEntry,
  QuarantineRegistry,
  ReplayMessage,
  SnapshotRecord,
  SnapshotStore,
  StoredSnapshot,
} from "@troupe/runtime";
import { recordCodec } from "@troupe/runtime/internal";
import {
  DEFAULT_LIMITS,
  type DecodeLimits,
  decodeFrame,
  ErrorCode,
  encodeFrame,
  type Frame,
  peekEnvelope,
  type TraceContext,
  TroupeError,
} from "@troupe/wire";
import {
  describeNatsError,
  isClosed,
  isConsumerNotFound,
  isTransient,
  messageOf,
  storageError,
  transportError,
} from "./errors.js";
import { agentHistory } from "./history.js";
import {
  ACK_WAIT_MS,
  DEFAULT_NAMESPACE,
  ensureNamespace,
  type NamespaceInfo,
  type NamespaceNames,
  shardConsumerConfig,
  shardOfAddress,
  subjectToken,
  tryAddressFromToken,
} from "./namespace.js";
import { PubAckWindow, type PublishOptions } from "./puback.js";
import { ServerFeature, serverHas } from "./server.js";

export interface NatsBackendOptions {
  /** A connected client; the backend never closes it. */
  nc: NatsConnection;
  /** Default "default". */
  namespace?: string;
  /** When given, the namespace must have this many shards (CONFIG_ERROR otherwise). */
  shardCount?: number;
  /** Replicas of the namespace's streams and buckets if this call creates them. Default 1. */
  replicas?: number;
  /** The result of an earlier `ensureNamespace` on this connection (skips it here). */
  namespaceInfo?: NamespaceInfo;
  /**
   * How long `append` keeps retrying a publish (same message id, so never stored twice)
   * before it fails with TRANSPORT_ERROR, ms. Default 30,000; must be below the inbox's
   * dedup window.
   */
  appendTimeoutMs?: number;
  /** How long one publish waits for its acknowledgement, ms. Default 5,000. */
  publishTimeoutMs?: number;
  /** Messages a shard consumer pulls at a time. Default 256. */
  pullBatch?: number;
  /** Shards to pull from as soon as the backend is opened. */
  shards?: readonly number[] | "all";
  /** Decode limits for direct frames (maxFrameBytes is capped by the server's max_payload). */
  limits?: Partial<DecodeLimits>;
  logger?: Logger;
}

export interface NatsBackendStats {
  /** Messages stored in the inbox by this backend (not counting duplicates). */
  appended: number;
  /** Appends the inbox answered as duplicates (same message id within the dedup window). */
  duplicates: number;
  /** Publish attempts repeated after a timeout or a lost connection. */
  appendRetries: number;
  /** Appends that failed for good. */
  appendFailures: number;
  /** Inbox messages handed to the runtime. */
  delivered: number;
  /**
   * Of those, deliveries the server marked as redelivered (nak'd, not acknowledged within
   * ack_wait, or left unacknowledged by a previous owner).
   */
  redelivered: number;
  acked: number;
  naked: number;
  /** Messages on an inbox subject whose token is not an address of that shard. */
  misrouted: number;
  /** Deliveries lost on the way (consumer delivery sequence jumped). */
  gaps: number;
  /** Messages delivered again while the runtime still held them (passed on once). */
  duplicateDeliveries: number;
  /** Shard consumers rewound to their ack floor (gaps, a previous owner's leftovers). */
  resyncs: number;
  directSent: number;
  directReceived: number;
  /** Direct frames that could not be decoded or were not for this client: dropped. */
  directDropped: number;
  parked: number;
  /** Messages of quarantined agents held in the parked stream (until release). */
  held: number;
  /**
   * Deliveries dropped, acknowledgements withheld and snapshot writes refused because this
   * process may no longer act for their shard (fenced: lease lapsed or shard moved on).
   */
  fenced: number;
  /** Snapshot writes that lost their compare-and-set: another activation stored first. */
  snapshotConflicts: number;
}

/**
 * What a worker's membership tells the backend about its right to act (fencing). Checked
 * synchronously before a delivery is handed over, an acknowledgement and a snapshot write,
 * so a process resumed after a pause fences itself before its first write, whatever order
 * its timers and I/O callbacks run in.
 */
export interface ShardFence {
  /** False once this process's lease may have run out (the leader may reassign its shards). */
  leaseHeld(): boolean;
  /** Called (synchronously) when a check finds the lease lapsed: fence every shard now. */
  onLapse(): void;
}

export interface OwnShardsOptions {
  /**
   * The previous owner died (its lease ran out): whatever it left unacknowledged will only
   * come back after ack_wait, so rewind to the ack floor at once instead of waiting to see.
   */
  previousOwnerDead?: boolean;
}

/** The runtime's Backend on NATS JetStream, plus shard ownership for workers. */
export interface NatsBackend extends Backend {
  readonly kind: "nats";
  readonly namespace: string;
  readonly names: NamespaceNames;
  readonly shardCount: number;
  /** The server's max_payload (headers plus data of one message). */
  readonly maxPayload: number;
  /** The largest frame this backend sends: min(1 MiB, max_payload). */
  readonly maxFrameBytes: number;
  /**
   * Start pulling from these shards' consumers (may be called before `open`: they start
   * then). Resolves once each has started, or has failed once and keeps retrying.
   */
  ownShards(shards: readonly number[], options?: OwnShardsOptions): Promise<void>;
  /**
   * Stop acting for these shards at once, without storing or acknowledging anything more of
   * theirs: deliveries still held are dropped (the next owner rewinds to the ack floor), and
   * snapshot writes of their agents fail as conflicts. Resolves once their consumers stopped.
   */
  fenceShards(shards: readonly number[]): Promise<void>;
  /** Installs (or removes) the lease check of the worker's membership. */
  setFence(fence: ShardFence | undefined): void;
  /**
   * Stop pulling from these shards. Resolves once no more deliveries for them will arrive;
   * messages already delivered and not acknowledged stay with the caller (ack or nak them).
   */
  releaseShards(shards: readonly number[]): Promise<void>;
  ownedShards(): number[];
  stats(): Readonly<NatsBackendStats>;
}

const HEADER_PREAMBLE = "NATS/1.0\r\n".length + 2;
const headerBytes = (name: string, value: string) => name.length + 2 + Buffer.byteLength(value) + 2;
/**
 * The most header bytes holding a message for a quarantined agent adds (see #hold): an inbox
 * message must leave room for them, or it could be stored and then never be held.
 */
const HOLD_HEADERS_MAX =
  HEADER_PREAMBLE +
  headerBytes("Troupe-Held", "quarantine") +
  headerBytes("Troupe-Sequence", String(Number.MAX_SAFE_INTEGER)) +
  Math.max(
    // one at a time: a message id
    headerBytes("Nats-Msg-Id", `held:${Number.MAX_SAFE_INTEGER}`),
    // in an atomic batch (a nuid for its id)
    headerBytes("Nats-Batch-Id", "x".repeat(22)) +
      headerBytes("Nats-Batch-Sequence", "1000") +
      headerBytes("Nats-Batch-Commit", "1"),
  );
/** Removes `item` from `queue` (where it is now: something may have been put in front). */
function dropFrom<T>(queue: T[], item: T): void {
  const i = queue.indexOf(item);
  if (i >= 0) queue.splice(i, 1);
}

/** Messages in one atomic batch when holding (the server takes up to 1,000). */
const HOLD_BATCH = 256;
/** Room kept for a KV message's headers when checking a snapshot against max_payload. */
const KV_HEADER_ALLOWANCE = 128;
const MAX_HEADER_VALUE = 1024;

const delay = (ms: number) =>
  new Promise<void>((r) => {
    const t = setTimeout(r, ms);
    t.unref?.();
  });

function backoffMs(attempt: number, base = 100, max = 2000): number {
  const ms = Math.min(max, base * 2 ** Math.max(0, attempt - 1));
  return Math.round(ms * (0.5 + Math.random() * 0.5));
}

function headerValue(v: string): string {
  // header values are one line
  const one = v.replace(/[\r\n]+/g, " ");
  return one.length > MAX_HEADER_VALUE ? `${one.slice(0, MAX_HEADER_VALUE - 1)}…` : one;
}

/** One append on its way to the inbox, retried with the same message id until its deadline. */
interface PendingAppend {
  readonly order: number;
  readonly lane: Lane;
  readonly subject: string;
  readonly bytes: Uint8Array;
  readonly messageId: string;
  readonly headers: MsgHdrs | undefined;
  readonly deadline: number;
  attempts: number;
  /** Queued in (or being retried by) its lane. */
  inLane: boolean;
  /** Settled: stored (acknowledged) or failed for good. */
  done: boolean;
  /** Retry without a backoff (the connection was replaced under it). */
  retryAtOnce: boolean;
  lastError: unknown;
  resolve(r: AppendResult): void;
  reject(e: unknown): void;
}

/**
 * Appends to one shard. They go out pipelined; once one fails (timeout, lost connection) the
 * lane holds new ones back and re-publishes in the original order, one at a time, until it
 * is through: a retry must not overtake what was sent after it (per-agent FIFO).
 */
interface Lane {
  readonly shard: number;
  blocked: boolean;
  pumping: boolean;
  queue: PendingAppend[];
}

interface Route {
  token: string;
  shard: number;
}

/** An inbox message handed to the runtime: ack/nak go to JetStream. */
class ShardDelivery implements Delivery {
  readonly to: string;
  readonly sequence: number;
  readonly redelivered: boolean;
  readonly bytes: Uint8Array;
  readonly shard: number;
  /** The latest delivery of this message (acks go to it: the server tracks that one). */
  msg: JsMsg;
  readonly #owner: NatsBackendImpl;
  settled = false;
  touchedAt: number;

  constructor(owner: NatsBackendImpl, msg: JsMsg, to: string, shard: number, now: number) {
    this.#owner = owner;
    this.shard = shard;
    this.msg = msg;
    this.to = to;
    this.sequence = msg.seq;
    this.redelivered = msg.redelivered;
    this.bytes = msg.data;
    this.touchedAt = now;
  }

  ack(): void {
    if (this.settled) return;
    this.settled = true;
    this.#owner.settle(this, "ack");
  }

  nak(delayMs?: number): void {
    if (this.settled) return;
    this.settled = true;
    this.#owner.settle(this, "nak", delayMs);
  }

  /** The W3C trace context in the message's headers (read only when a span wants it). */
  get trace(): TraceContext | undefined {
    const h = this.msg.headers;
    if (h === undefined) return undefined;
    // header names are case-insensitive (HTTP semantics); other publishers may capitalise
    const traceparent = h.get("traceparent", Match.IgnoreCase);
    if (traceparent === "") return undefined;
    const tracestate = h.get("tracestate", Match.IgnoreCase);
    return tracestate === "" ? { traceparent } : { traceparent, tracestate };
  }
}

type PullerMode = "normal" | "takeover" | "discard";

/**
 * Pulls one shard's durable consumer and hands its messages over in stream order. Guards
 * that order, which the runtime's dedup depends on (a message older than one it has
 * processed is taken for a duplicate): a delivery lost on the way (the consumer's delivery
 * sequence jumps) or messages a dead previous owner left unacknowledged would otherwise
 * arrive only after ack_wait, behind newer ones. Either way the consumer is rewound to its
 * ack floor before anything newer is handed over.
 */
class ShardPuller {
  readonly shard: number;
  readonly name: string;
  readonly #b: NatsBackendImpl;
  #stopping = false;
  #messages: ConsumerMessages | undefined;
  #drain: (() => Promise<void>) | undefined;
  #wake: (() => void) | undefined;
  readonly done: Promise<void>;
  readonly ready: Promise<void>;
  #markReady!: () => void;
  #mode: PullerMode = "normal";
  #resyncReason: string | undefined;
  #lastResyncAt = 0;
  #resyncsInARow = 0;
  /** Consumer delivery sequence of the last message seen (0 = unknown). */
  #lastDseq = 0;
  // takeover: messages a previous owner had delivered and not acknowledged
  #oldPending = 0;
  #oldFrontier = 0;
  #held: JsMsg[] = [];
  #quiet: NodeJS.Timeout | undefined;
  /** Highest stream sequence this backend appended to the shard (for pendingDeliveries). */
  appendedMax = 0;
  deliveredMax = 0;

  readonly #previousOwnerDead: boolean;
  /** The ack floor of a recreate under way (set until the consumer is added back). */
  #rewindFloor: number | undefined;
  /** The next rewind recreates the consumer (ends every other puller's requests). */
  #recreate = false;

  constructor(b: NatsBackendImpl, shard: number, previousOwnerDead = false) {
    this.#b = b;
    this.shard = shard;
    this.#previousOwnerDead = previousOwnerDead;
    this.name = b.names.shardConsumer(shard);
    this.ready = new Promise((r) => {
      this.#markReady = r;
    });
    this.done = this.#run();
  }

  async #run(): Promise<void> {
    const b = this.#b;
    let failures = 0;
    let fresh = true;
    while (!this.#stopping && !b.nc.isClosed()) {
      try {
        if (this.#resyncReason !== undefined) await this.#resync();
        const consumer = await b.js.consumers.get(b.names.inboxStream, this.name);
        if (fresh) {
          await this.#beginTakeover();
          fresh = false;
          if (this.#resyncReason !== undefined) continue;
        }
        if (this.#stopping) break;
        if (this.#mode === "discard") this.#mode = "normal";
        const messages = await consumer.consume({
          max_messages: b.pullBatch,
          expires: 10_000,
          // a pull the server never answered (a consumer leader being elected, a node lost)
          // is noticed after two missed heartbeats and pulled again: 2 s, not 10
          idle_heartbeat: 1_000,
          callback: (m) => this.#onMessage(m),
        });
        this.#messages = messages;
        this.#drain = drainerOf(messages);
        void this.#watch(messages);
        this.#markReady();
        failures = 0;
        const err = await messages.closed();
        this.#messages = undefined;
        this.#drain = undefined;
        if (this.#stopping) break;
        if (this.#resyncReason !== undefined) continue;
        if (err instanceof Error) throw err;
      } catch (e) {
        this.#messages = undefined;
        this.#drain = undefined;
        if (this.#stopping || b.nc.isClosed()) break;
        failures++;
        const retryInMs = backoffMs(failures, 250, 5000);
        const log = failures === 1 || failures % 10 === 0 ? b.logger.warn : b.logger.debug;
        log.call(
          b.logger,
          { shard: this.shard, consumer: this.name, err: e, retryInMs, failures },
          `cannot pull shard ${this.shard}: ${describeNatsError(e)}; retrying`,
        );
        this.#markReady();
        await new Promise<void>((r) => {
          const t = setTimeout(r, retryInMs);
          this.#wake = () => {
            clearTimeout(t);
            r();
          };
        });
        this.#wake = undefined;
      }
    }
    this.#clearQuiet();
    // a takeover that did not finish: give what it held back, in order
    const held = this.#held.splice(0).sort((x, y) => x.seq - y.seq);
    for (const m of held) safely(() => m.nak());
    this.#markReady();
  }

  /** Consumer notifications: a heartbeat tells the last delivery sequence (tail loss). */
  async #watch(messages: ConsumerMessages): Promise<void> {
    try {
      for await (const s of messages.status()) {
        if (s.type !== "heartbeat" || this.#mode !== "normal") continue;
        const last = s.lastConsumerSequence;
        if (this.#lastDseq > 0 && last > this.#lastDseq) {
          this.#b.counters.gaps++;
          this.#requestResync(
            `the server delivered up to ${last} but only ${this.#lastDseq} arrived (lost on the way)`,
          );
        }
      }
    } catch {
      // the iterator ends with the consumer
    }
  }

  /** A fresh owner: anything still unacknowledged was delivered to someone before us. */
  async #beginTakeover(): Promise<void> {
    const info = await this.#b.jsm.consumers.info(this.#b.names.inboxStream, this.name);
    this.#lastDseq = info.delivered.consumer_seq;
    if (info.num_ack_pending === 0) return;
    if (this.#previousOwnerDead) {
      // nobody will nak them: waiting for them would only add the quiet period to recovery.
      // Recreate rather than reset: that ends the pull requests the old owner left on the
      // consumer (a paused process's requests would go on taking messages from us)
      this.#recreate = true;
      this.#requestResync(
        `${info.num_ack_pending} message(s) a dead previous owner took are not acknowledged`,
      );
      return;
    }
    // Nak'd messages come first (the server's redelivery queue), at once. Hold what comes
    // until all of them are here; a newer message first, or silence, means some are waiting
    // for ack_wait (their owner died): rewind instead.
    this.#mode = "takeover";
    this.#oldPending = info.num_ack_pending;
    this.#oldFrontier = info.delivered.stream_seq;
    this.#held = [];
    this.#armQuiet();
  }

  #armQuiet(): void {
    this.#clearQuiet();
    this.#quiet = setTimeout(() => {
      if (this.#mode === "takeover") {
        this.#requestResync(
          `${this.#oldPending} message(s) a previous owner took are not acknowledged`,
        );
      }
    }, 1000);
    this.#quiet.unref?.();
  }

  #clearQuiet(): void {
    if (this.#quiet !== undefined) clearTimeout(this.#quiet);
    this.#quiet = undefined;
  }

  #onMessage(m: JsMsg): void {
    if (this.#mode === "discard") return; // delivered again after the rewind
    const dseq = m.info.deliverySequence;
    if (this.#lastDseq > 0 && dseq > this.#lastDseq + 1) {
      this.#b.counters.gaps++;
      this.#requestResync(
        `deliveries ${this.#lastDseq + 1}..${dseq - 1} were lost on the way (connection trouble?)`,
      );
      return;
    }
    // (a smaller one: the server forgot recent deliveries, e.g. restarted; take it from here)
    this.#lastDseq = dseq;
    if (this.#mode === "takeover") {
      if (m.seq > this.#oldFrontier) {
        this.#requestResync(
          `message(s) a previous owner took are not acknowledged (newer message ${m.seq} came first)`,
        );
        return;
      }
      this.#held.push(m);
      this.#oldPending--;
      if (this.#oldPending > 0) {
        this.#armQuiet();
        return;
      }
      this.#clearQuiet();
      this.#mode = "normal";
      const held = this.#held.splice(0).sort((x, y) => x.seq - y.seq);
      for (const h of held) this.#b.deliver(this, h);
      return;
    }
    this.#b.deliver(this, m);
  }

  #requestResync(reason: string): void {
    if (this.#stopping) return;
    this.#mode = "discard";
    this.#clearQuiet();
    this.#held = [];
    this.#resyncReason ??= reason;
    void this.#drain?.();
    this.#wake?.();
  }

  /** Rewinds the consumer to its ack floor: everything unacknowledged comes again, in order. */
  async #resync(): Promise<void> {
    const b = this.#b;
    const reason = this.#resyncReason;
    const since = Date.now() - this.#lastResyncAt;
    this.#resyncsInARow = since < 10_000 ? this.#resyncsInARow + 1 : 1;
    if (since < 2000) await delay(2000 - since);
    if (this.#stopping) return;
    this.#lastResyncAt = Date.now();
    b.counters.resyncs++;
    (this.#resyncsInARow > 3 ? b.logger.error : b.logger.warn).call(
      b.logger,
      { shard: this.shard, consumer: this.name, reason, inARow: this.#resyncsInARow },
      this.#resyncsInARow > 3
        ? `shard ${this.shard} keeps losing deliveries: is another process pulling ${this.name}?`
        : `rewinding shard ${this.shard} to its ack floor: ${reason}`,
    );
    const stream = b.names.inboxStream;
    // losing deliveries again and again: someone else pulls this consumer (a stale owner)
    if (this.#resyncsInARow > 1) this.#recreate = true;
    if (!this.#recreate && serverHas(b.nc.info!, ServerFeature.CONSUMER_RESET)) {
      const r = await b.jsm.consumers.reset(stream, this.name);
      this.#lastDseq = r.delivered?.consumer_seq ?? 0;
    } else {
      // recreate the consumer from the ack floor (before 2.14 there is no reset); unlike a
      // reset, this drops the pull requests other processes left waiting on it
      // The floor is kept until the consumer is back: should the add fail after the delete,
      // the next try must not lose it (nor take the floor of a consumer someone else
      // recreated meanwhile from the start of the stream).
      let floor: number;
      try {
        const info = await b.jsm.consumers.info(stream, this.name);
        floor = Math.max(info.ack_floor.stream_seq, this.#rewindFloor ?? 0);
      } catch (e) {
        if (!isConsumerNotFound(e) || this.#rewindFloor === undefined) throw e;
        floor = this.#rewindFloor;
      }
      this.#rewindFloor = floor;
      await b.jsm.consumers.delete(stream, this.name).catch((e: unknown) => {
        if (!isConsumerNotFound(e)) throw e;
      });
      await b.jsm.consumers.add(stream, {
        ...shardConsumerConfig(b.names, this.shard),
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: floor + 1,
      });
      this.#rewindFloor = undefined;
      this.#lastDseq = 0;
      this.#recreate = false;
    }
    this.#resyncReason = undefined;
    this.#mode = "normal";
  }

  /** Stop pulling; resolves once nothing more will be delivered. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#clearQuiet();
    this.#wake?.();
    const drain = this.#drain;
    if (drain !== undefined) await drain();
    else await this.#messages?.close();
    await this.done;
  }
}

/**
 * Ends a consume() without losing what is on the way: draining its subscription unsubscribes
 * and flushes, so every message the server sent before it saw the unsubscribe is still
 * handed to the callback (close() would drop them, and they would come back only after
 * ack_wait, behind newer ones). nats.js keeps the subscription on the ConsumerMessages
 * object; where that is not there, close() it is.
 */
function drainerOf(messages: ConsumerMessages): () => Promise<void> {
  let draining: Promise<void> | undefined;
  return () => {
    draining ??= (async () => {
      const sub = (messages as unknown as { sub?: Subscription }).sub;
      if (sub !== undefined && !sub.isClosed() && typeof sub.drain === "function") {
        await sub.drain().catch(() => undefined);
      }
      await messages.close();
    })();
    return draining;
  };
}

interface Signal {
  readonly promise: Promise<never>;
  fire(): void;
}

const RECONNECTED = new Error("the NATS connection was replaced");

/** A promise that rejects when fired (to race an attempt against a reconnect). */
function newSignal(): Signal {
  let fire!: () => void;
  const promise = new Promise<never>((_, reject) => {
    fire = () => reject(RECONNECTED);
  });
  promise.catch(() => undefined);
  return { promise, fire };
}

function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // the connection is gone: the server redelivers after ack_wait
  }
}

/** The subject a KV put of `key` publishes to (nats.js's own rule: domains, edit prefixes). */
function kvSubject(kv: KV, key: string): string | undefined {
  const impl = kv as unknown as { subjectForKey?: (k: string, edit: boolean) => string };
  return typeof impl.subjectForKey === "function" ? impl.subjectForKey(key, true) : undefined;
}

/** @internal */
export class NatsBackendImpl implements NatsBackend {
  readonly kind = "nats" as const;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly names: NamespaceNames;
  readonly namespace: string;
  readonly shardCount: number;
  readonly maxPayload: number;
  readonly maxFrameBytes: number;
  readonly limits: DecodeLimits;
  readonly logger: Logger;
  readonly pullBatch: number;
  readonly counters: NatsBackendStats = {
    appended: 0,
    duplicates: 0,
    appendRetries: 0,
    appendFailures: 0,
    delivered: 0,
    redelivered: 0,
    acked: 0,
    naked: 0,
    misrouted: 0,
    gaps: 0,
    duplicateDeliveries: 0,
    resyncs: 0,
    directSent: 0,
    directReceived: 0,
    directDropped: 0,
    parked: 0,
    held: 0,
    fenced: 0,
    snapshotConflicts: 0,
  };
  readonly snapshots: SnapshotStore;
  readonly quarantine: QuarantineRegistry;
  readonly parked: ParkingLot;
  readonly #appendTimeoutMs: number;
  /** The held stream takes atomic batches (see #holdMany). */
  readonly #heldAtomic: boolean;
  readonly #publishTimeoutMs: number;
  #pubacks: PubAckWindow | undefined;
  readonly #snapshotKv: KV;
  readonly #quarantineKv: KV;
  #handlers: BackendHandlers | undefined;
  #clientId: string | undefined;
  #directSub: Subscription | undefined;
  readonly #wanted = new Set<number>();
  /** Shards fenced off: nothing of theirs is handed over, stored or acknowledged any more. */
  readonly #fenced = new Set<number>();
  #fence: ShardFence | undefined;
  readonly #pullers = new Map<number, ShardPuller>();
  readonly #lanes = new Map<number, Lane>();
  readonly #routes = new Map<string, Route>();
  readonly #tokens = new Map<string, { address: string; shard: number } | null>();
  /** Deliveries the runtime holds, by stream sequence. */
  readonly #unsettled = new Map<number, ShardDelivery>();
  #order = 0;
  /** First attempts on their way (retried at once when the connection is replaced). */
  readonly #inflight = new Set<PendingAppend>();
  #reconnected: Signal = newSignal();
  #keepalive: NodeJS.Timeout | undefined;

  constructor(
    nc: NatsConnection,
    jsm: JetStreamManager,
    ns: NamespaceInfo,
    kvs: { snapshots: KV; quarantine: KV },
    options: NatsBackendOptions,
  ) {
    this.nc = nc;
    this.jsm = jsm;
    this.js = jetstream(nc);
    this.names = ns.names;
    this.namespace = ns.namespace;
    this.shardCount = ns.shardCount;
    this.maxPayload = ns.server.maxPayload;
    this.maxFrameBytes = Math.min(
      ns.server.maxFrameBytes,
      options.limits?.maxFrameBytes ?? Number.POSITIVE_INFINITY,
    );
    this.limits = {
      ...DEFAULT_LIMITS,
      ...options.limits,
      maxFrameBytes: this.maxFrameBytes,
      maxStringBytes: Math.min(
        options.limits?.maxStringBytes ?? DEFAULT_LIMITS.maxStringBytes,
        this.maxFrameBytes,
      ),
    };
    this.logger = options.logger ?? silent;
    this.pullBatch = options.pullBatch ?? 256;
    this.#appendTimeoutMs = options.appendTimeoutMs ?? 30_000;
    this.#heldAtomic = ns.heldAtomic === true;
    this.#publishTimeoutMs = options.publishTimeoutMs ?? 5_000;
    if (this.#appendTimeoutMs >= ns.duplicateWindowMs) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `appendTimeoutMs (${this.#appendTimeoutMs}) must be shorter than the inbox's dedup window (${ns.duplicateWindowMs} ms): a retry after the window could store a message twice`,
      );
    }
    this.#snapshotKv = kvs.snapshots;
    this.#quarantineKv = kvs.quarantine;
    this.snapshots = this.#snapshotStore();
    this.quarantine = this.#quarantineRegistry();
    this.parked = this.#parkingLot();
    void this.#watchConnection();
    if (options.shards !== undefined) {
      const all =
        options.shards === "all"
          ? Array.from({ length: this.shardCount }, (_, i) => i)
          : options.shards;
      for (const s of this.#checkShards(all)) this.#wanted.add(s);
    }
  }

  stats(): Readonly<NatsBackendStats> {
    return { ...this.counters };
  }

  history(
    address: string,
    options: Parameters<NonNullable<Backend["history"]>>[1] = {},
  ): AsyncIterable<ReplayMessage> {
    return agentHistory(this.nc, this, address, { ...options, limits: this.limits });
  }

  // --- routing ---------------------------------------------------------------------------

  #route(address: string): Route {
    let r = this.#routes.get(address);
    if (r === undefined) {
      const shard = shardOfAddress(address, this.shardCount);
      r = { token: subjectToken(address), shard };
      if (this.#routes.size >= 10_000) this.#routes.clear();
      this.#routes.set(address, r);
    }
    return r;
  }

  /** The address an inbox subject names, when it is a valid one of this shard. */
  #addressOf(token: string, shard: number): string | undefined {
    let t = this.#tokens.get(token);
    if (t === undefined) {
      const address = tryAddressFromToken(token);
      let s = -1;
      if (address !== undefined) {
        try {
          s = shardOfAddress(address, this.shardCount);
        } catch {
          // not an address that has a shard: parked by the runtime
        }
      }
      t = address === undefined || s < 0 ? null : { address, shard: s };
      if (this.#tokens.size >= 10_000) this.#tokens.clear();
      this.#tokens.set(token, t);
    }
    return t !== null && t.shard === shard ? t.address : undefined;
  }

  // --- appends ---------------------------------------------------------------------------

  append(out: Outgoing): Promise<AppendResult> {
    const envelope = "frame" in out ? out.frame.envelope : out.envelope;
    let route: Route;
    let bytes: Uint8Array;
    let hdrs: MsgHdrs | undefined;
    try {
      route = this.#route(envelope.to);
      if ("frame" in out) {
        bytes = encodeFrame(out.frame, this.limits);
      } else {
        bytes = out.bytes;
        if (bytes.length > this.maxFrameBytes) {
          throw new TroupeError(
            ErrorCode.LIMIT_EXCEEDED,
            `frame of ${bytes.length} bytes exceeds maxFrameBytes ${this.maxFrameBytes}`,
            { details: { limit: "maxFrameBytes", bytes: bytes.length } },
          );
        }
      }
      let headerSize = HEADER_PREAMBLE + headerBytes("Nats-Msg-Id", envelope.messageId);
      const trace = envelope.trace;
      if (trace !== undefined) {
        hdrs = natsHeaders();
        hdrs.set("traceparent", trace.traceparent);
        headerSize += headerBytes("traceparent", trace.traceparent);
        if (trace.tracestate !== undefined) {
          hdrs.set("tracestate", trace.tracestate);
          headerSize += headerBytes("tracestate", trace.tracestate);
        }
      }
      if (bytes.length + Math.max(headerSize, HOLD_HEADERS_MAX) > this.maxPayload) {
        throw new TroupeError(
          ErrorCode.LIMIT_EXCEEDED,
          `message of ${bytes.length + headerSize} bytes (frame ${bytes.length}, headers ${headerSize}; ${HOLD_HEADERS_MAX} bytes of headers are kept free so it can be held if its agent is quarantined) exceeds the server's max_payload ${this.maxPayload}`,
          { details: { limit: "max_payload", bytes: bytes.length + headerSize } },
        );
      }
    } catch (e) {
      return Promise.reject(e);
    }
    let lane = this.#lanes.get(route.shard);
    if (lane === undefined) {
      lane = { shard: route.shard, blocked: false, pumping: false, queue: [] };
      this.#lanes.set(route.shard, lane);
    }
    return new Promise<AppendResult>((resolve, reject) => {
      const p: PendingAppend = {
        order: ++this.#order,
        lane: lane,
        subject: this.names.inboxSubject(route.shard, route.token),
        bytes,
        messageId: envelope.messageId,
        headers: hdrs,
        deadline: Date.now() + this.#appendTimeoutMs,
        attempts: 0,
        inLane: false,
        done: false,
        retryAtOnce: false,
        lastError: undefined,
        resolve,
        reject,
      };
      if (lane.blocked) this.#enqueue(p);
      else this.#firstAttempt(p);
    });
  }

  /** One publish of `p`; whichever attempt is acknowledged first settles it. */
  #attempt(p: PendingAppend, timeout: number): Promise<PubAck> {
    p.attempts++;
    const opts: PublishOptions = { msgID: p.messageId };
    if (p.headers !== undefined) opts.headers = p.headers;
    const sent = this.#publisher().publish(p.subject, p.bytes, opts, timeout);
    // an earlier attempt may still be answered after a later one started (same id: the
    // later one would say "duplicate"); the first answer counts
    sent.then(
      (ack) => this.#stored(p, ack),
      () => undefined,
    );
    return sent;
  }

  #firstAttempt(p: PendingAppend): void {
    this.#inflight.add(p);
    let sent: Promise<PubAck>;
    try {
      sent = this.#attempt(p, this.#publishTimeoutMs);
    } catch (e) {
      this.#inflight.delete(p);
      this.#failed(p, e);
      return;
    }
    sent.then(
      () => this.#inflight.delete(p),
      (e: unknown) => {
        this.#inflight.delete(p);
        // once in its lane, the lane's retries are in charge
        if (!p.done && !p.inLane) this.#failed(p, e);
      },
    );
  }

  #stored(p: PendingAppend, ack: PubAck): void {
    if (p.done) return;
    p.done = true;
    if (ack.duplicate) this.counters.duplicates++;
    else this.counters.appended++;
    const puller = this.#pullers.get(p.lane.shard);
    if (puller !== undefined && ack.seq > puller.appendedMax) puller.appendedMax = ack.seq;
    p.resolve({ sequence: ack.seq, duplicate: ack.duplicate });
  }

  #fail(p: PendingAppend, e: unknown): void {
    if (p.done) return;
    p.done = true;
    this.counters.appendFailures++;
    p.reject(this.#appendError(p, e));
  }

  #failed(p: PendingAppend, e: unknown): void {
    p.lastError = e;
    if (!isTransient(e) || Date.now() >= p.deadline) this.#fail(p, e);
    else this.#enqueue(p);
  }

  #enqueue(p: PendingAppend): void {
    if (p.done || p.inLane) return;
    p.inLane = true;
    const lane = p.lane;
    lane.blocked = true;
    // keep the lane in the order appends were made
    let i = lane.queue.length;
    while (i > 0 && lane.queue[i - 1]!.order > p.order) i--;
    lane.queue.splice(i, 0, p);
    if (!lane.pumping) void this.#pump(lane);
  }

  /**
   * The connection came back: publishes that were on their way are probably lost with the
   * old connection (nobody will answer them). Retry them now, in order, instead of after
   * their timeout.
   */
  #onReconnect(): void {
    const signal = this.#reconnected;
    this.#reconnected = newSignal();
    signal.fire();
    const lost = [...this.#inflight].sort((a, b) => a.order - b.order);
    this.#inflight.clear();
    for (const p of lost) {
      p.retryAtOnce = true;
      this.#enqueue(p);
    }
  }

  async #pump(lane: Lane): Promise<void> {
    lane.pumping = true;
    try {
      while (lane.queue.length > 0) {
        const p = lane.queue[0]!;
        if (p.done) {
          lane.queue.shift();
          continue;
        }
        const remaining = p.deadline - Date.now();
        if (remaining <= 0) {
          lane.queue.shift();
          this.#fail(p, p.lastError);
          continue;
        }
        if (p.attempts > 0) {
          // a retry: back off, unless the connection was just replaced under it
          if (p.retryAtOnce) p.retryAtOnce = false;
          else await delay(Math.min(backoffMs(p.attempts), remaining));
          if (p.done || Date.now() >= p.deadline) continue;
          this.counters.appendRetries++;
        }
        const reconnected = this.#reconnected;
        try {
          const sent = this.#attempt(
            p,
            Math.max(1, Math.min(this.#publishTimeoutMs, p.deadline - Date.now())),
          );
          await Promise.race([sent, reconnected.promise]);
          if (!p.done) {
            // the connection was replaced while this attempt was on its way: again, at once
            p.retryAtOnce = true;
            continue;
          }
          // (an older append may have been put in front of it meanwhile: remove this one)
          dropFrom(lane.queue, p);
        } catch (e) {
          if (p.done) continue;
          if (e === RECONNECTED) {
            p.retryAtOnce = true;
            continue;
          }
          p.lastError = e;
          if (!isTransient(e)) {
            dropFrom(lane.queue, p);
            this.#fail(p, e);
          } else if (p.attempts === 2 || p.attempts % 10 === 0) {
            this.logger.warn(
              { messageId: p.messageId, attempts: p.attempts, err: e },
              `append not acknowledged yet (${describeNatsError(e)}); retrying with the same message id`,
            );
          }
        }
      }
    } finally {
      lane.pumping = false;
      lane.blocked = lane.queue.length > 0;
    }
  }

  async #watchConnection(): Promise<void> {
    try {
      for await (const s of this.nc.status()) {
        if (s.type === "reconnect") this.#onReconnect();
      }
    } catch {
      // ends with the connection
    }
  }

  #appendError(p: PendingAppend, e: unknown): TroupeError {
    if (e instanceof TroupeError) return e;
    const details = { subject: p.subject, messageId: p.messageId, attempts: p.attempts };
    if (/maximum payload|max_payload|message size exceeds/i.test(messageOf(e))) {
      return new TroupeError(ErrorCode.LIMIT_EXCEEDED, `message too large: ${messageOf(e)}`, {
        cause: e,
        details,
      });
    }
    if (isClosed(e)) {
      return new TroupeError(
        ErrorCode.TRANSPORT_ERROR,
        "could not append to the inbox: the NATS connection is closed",
        { cause: e, details },
      );
    }
    if (isTransient(e)) {
      return new TroupeError(
        ErrorCode.TRANSPORT_ERROR,
        `could not append to the inbox within ${this.#appendTimeoutMs} ms (${p.attempts} attempts): ${describeNatsError(e)}`,
        { cause: e, retryAfterMs: 1000, details },
      );
    }
    return new TroupeError(
      ErrorCode.TRANSPORT_ERROR,
      `the inbox refused the message: ${messageOf(e)}`,
      { cause: e, details },
    );
  }

  // --- direct frames -----------------------------------------------------------------------

  async sendDirect(out: Outgoing): Promise<void> {
    const envelope = "frame" in out ? out.frame.envelope : out.envelope;
    const to = envelope.to;
    if (typeof to !== "string" || !to.startsWith("~") || to.length < 2) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        `direct frames go to client inboxes (~id), not ${JSON.stringify(to)}`,
      );
    }
    const subject = this.names.clientSubject(to.slice(1));
    const bytes = "frame" in out ? encodeFrame(out.frame, this.limits) : out.bytes;
    const trace = envelope.trace;
    let size = bytes.length + (trace === undefined ? 0 : 256);
    let hdrs: MsgHdrs | undefined;
    if (trace !== undefined) {
      hdrs = natsHeaders();
      hdrs.set("traceparent", trace.traceparent);
      if (trace.tracestate !== undefined) hdrs.set("tracestate", trace.tracestate);
      size = bytes.length + HEADER_PREAMBLE + 256;
    }
    if (size > this.maxPayload) {
      throw new TroupeError(
        ErrorCode.LIMIT_EXCEEDED,
        `direct frame of ${bytes.length} bytes exceeds the server's max_payload ${this.maxPayload}`,
        { details: { limit: "max_payload", bytes: bytes.length } },
      );
    }
    try {
      this.nc.publish(subject, bytes, hdrs === undefined ? undefined : { headers: hdrs });
      this.counters.directSent++;
    } catch (e) {
      throw transportError(`could not send to ${to}`, e);
    }
  }

  #onDirect(err: Error | null, data: Uint8Array): void {
    const h = this.#handlers;
    if (err !== null || h === undefined) return;
    // sealed frames go on as bytes: the runtime opens them (it has the keys)
    let message: Frame | Uint8Array;
    let to: string;
    try {
      const peeked = peekEnvelope(data, this.limits);
      to = peeked.envelope.to;
      message = peeked.sealed ? data : decodeFrame(data, this.limits);
    } catch (e) {
      this.counters.directDropped++;
      this.logger.warn(
        { err: e, bytes: data.length, clientId: this.#clientId },
        `dropped an undecodable direct frame: ${messageOf(e)}`,
      );
      return;
    }
    if (to !== `~${this.#clientId}`) {
      this.counters.directDropped++;
      this.logger.warn(
        { to, clientId: this.#clientId },
        "dropped a direct frame addressed to another client",
      );
      return;
    }
    this.counters.directReceived++;
    h.direct(message);
  }

  // --- shard consumers -------------------------------------------------------------------

  #checkShards(shards: readonly number[]): number[] {
    if (!Array.isArray(shards)) {
      throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "shards must be an array of numbers");
    }
    for (const s of shards) {
      if (!Number.isInteger(s) || s < 0 || s >= this.shardCount) {
        throw new TroupeError(
          ErrorCode.INVALID_ARGUMENT,
          `shard ${String(s)} is not one of this namespace's 0..${this.shardCount - 1}`,
        );
      }
    }
    return [...new Set(shards)];
  }

  async ownShards(shards: readonly number[], options: OwnShardsOptions = {}): Promise<void> {
    const list = this.#checkShards(shards);
    // a puller still stopping (a fence or release just now) would be handed back, then
    // dropped once stopped, leaving the shard owned and unpulled; and until it has stopped
    // its last deliveries must stay fenced: wait for it first
    await Promise.all(list.map((s) => this.#stoppingPullers.get(s)?.catch(() => {})));
    for (const s of list) {
      this.#wanted.add(s);
      this.#fenced.delete(s);
    }
    if (this.#handlers === undefined) return;
    const dead = options.previousOwnerDead === true;
    await Promise.all(list.map((s) => this.#startPuller(s, dead).ready));
  }

  setFence(fence: ShardFence | undefined): void {
    this.#fence = fence;
  }

  /** Whether this process may still act for `shard`; a lapsed lease fences everything first. */
  #mayActFor(shard: number): boolean {
    const fence = this.#fence;
    if (fence !== undefined && !this.#fenced.has(shard) && !fence.leaseHeld()) fence.onLapse();
    return !this.#fenced.has(shard);
  }

  async fenceShards(shards: readonly number[]): Promise<void> {
    const list = this.#checkShards(shards);
    for (const s of list) {
      this.#fenced.add(s);
      this.#wanted.delete(s);
    }
    // what the runtime still holds of them is neither acknowledged nor given back: the next
    // owner rewinds to the ack floor (a nak could hand it to that owner behind newer ones)
    const set = new Set(list);
    for (const d of [...this.#unsettled.values()]) {
      if (!set.has(d.shard)) continue;
      d.settled = true;
      this.#unsettled.delete(d.sequence);
      this.counters.fenced++;
    }
    await this.#stopPullers(list);
  }

  /** Pullers being stopped, by shard: owning a shard again waits for its old puller first. */
  readonly #stoppingPullers = new Map<number, Promise<void>>();

  #stopPullers(shards: readonly number[]): Promise<unknown> {
    return Promise.all(
      shards.map((s) => {
        const p = this.#pullers.get(s);
        if (p === undefined) return this.#stoppingPullers.get(s);
        const stopped = p.stop().finally(() => {
          if (this.#pullers.get(s) === p) this.#pullers.delete(s);
          if (this.#stoppingPullers.get(s) === stopped) this.#stoppingPullers.delete(s);
        });
        this.#stoppingPullers.set(s, stopped);
        return stopped;
      }),
    );
  }

  #startPuller(shard: number, previousOwnerDead = false): ShardPuller {
    let p = this.#pullers.get(shard);
    if (p === undefined) {
      p = new ShardPuller(this, shard, previousOwnerDead);
      this.#pullers.set(shard, p);
    }
    return p;
  }

  async releaseShards(shards: readonly number[]): Promise<void> {
    const list = this.#checkShards(shards);
    for (const s of list) this.#wanted.delete(s);
    await this.#stopPullers(list);
  }

  ownedShards(): number[] {
    return [...this.#wanted].sort((a, b) => a - b);
  }

  /** The shard of an agent address (undefined for one that has none, e.g. a client inbox). */
  shardOf(address: string): number | undefined {
    try {
      return this.#route(address).shard;
    } catch {
      return undefined;
    }
  }

  /** An agent is hosted here while its shard is pulled here. */
  hosts(address: string): boolean {
    try {
      return this.#wanted.has(this.#route(address).shard);
    } catch {
      return false;
    }
  }

  /** @internal a shard consumer's message, to the runtime */
  deliver(puller: ShardPuller, m: JsMsg): void {
    const h = this.#handlers;
    if (h === undefined) {
      // closed meanwhile: give it back at once
      safely(() => m.nak());
      return;
    }
    if (!this.#mayActFor(puller.shard)) {
      // not ours any more: dropped unacknowledged, the next owner rewinds to the ack floor
      this.counters.fenced++;
      return;
    }
    const held = this.#unsettled.get(m.seq);
    if (held !== undefined) {
      // Delivered again while the runtime still holds it (the server forgot the delivery,
      // e.g. it restarted): one copy only, or the runtime could apply it twice in a batch.
      // Acks go to the newer delivery, the one the server now waits for.
      held.msg = m;
      held.touchedAt = Date.now();
      this.counters.duplicateDeliveries++;
      return;
    }
    const subject = m.subject;
    const token = subject.slice(subject.lastIndexOf(".") + 1);
    let to = this.#addressOf(token, puller.shard);
    if (to === undefined) {
      // not an address of this shard: the raw token (never a valid address, base64url has
      // no '/') makes the runtime park it with its routing failure
      this.counters.misrouted++;
      this.logger.warn(
        { subject, sequence: m.seq, shard: puller.shard },
        `inbox message on ${subject} is not addressed to an agent of shard ${puller.shard}; it will be parked`,
      );
      to = token;
    }
    if (m.seq > puller.deliveredMax) puller.deliveredMax = m.seq;
    const d = new ShardDelivery(this, m, to, puller.shard, Date.now());
    this.#unsettled.set(d.sequence, d);
    this.counters.delivered++;
    if (m.redelivered) this.counters.redelivered++;
    h.deliver(d);
  }

  /** @internal */
  settle(d: ShardDelivery, how: "ack" | "nak", delayMs?: number): void {
    if (this.#unsettled.get(d.sequence) === d) this.#unsettled.delete(d.sequence);
    if (!this.#mayActFor(d.shard)) {
      this.counters.fenced++;
      return;
    }
    if (how === "ack") {
      this.counters.acked++;
      safely(() => d.msg.ack());
    } else {
      this.counters.naked++;
      safely(() => d.msg.nak(delayMs !== undefined && delayMs > 0 ? delayMs : undefined));
    }
  }

  /**
   * Messages the runtime holds (a group commit, a retry backoff, a quarantined agent's
   * mailbox) must not be redelivered behind its back after ack_wait: tell the server they
   * are in progress.
   */
  #startKeepalive(): void {
    const every = Math.floor(ACK_WAIT_MS / 3);
    this.#keepalive = setInterval(() => {
      const now = Date.now();
      for (const d of this.#unsettled.values()) {
        if (now - d.touchedAt >= every) {
          d.touchedAt = now;
          safely(() => d.msg.working());
        }
      }
    }, every);
    this.#keepalive.unref?.();
  }

  pendingDeliveries(): number {
    let n = 0;
    for (const p of this.#pullers.values()) if (p.appendedMax > p.deliveredMax) n++;
    return n;
  }

  // --- lifecycle ---------------------------------------------------------------------------

  async open(clientId: string, handlers: BackendHandlers): Promise<void> {
    if (this.#handlers !== undefined) {
      throw new TroupeError(
        ErrorCode.INVALID_STATE,
        "this NATS backend is already open: one runtime uses it at a time",
      );
    }
    const subject = this.names.clientSubject(clientId);
    if (this.nc.isClosed()) {
      throw new TroupeError(ErrorCode.TRANSPORT_ERROR, "the NATS connection is closed");
    }
    this.#handlers = handlers;
    this.#clientId = clientId;
    this.#directSub = this.nc.subscribe(subject, {
      callback: (err, msg) => this.#onDirect(err, msg.data),
    });
    this.#startKeepalive();
    await Promise.all([...this.#wanted].map((s) => this.#startPuller(s).ready));
  }

  /** The window JetStream publishes go through (a new one after close). */
  #publisher(): PubAckWindow {
    if (this.#pubacks === undefined) this.#pubacks = new PubAckWindow(this.nc);
    return this.#pubacks;
  }

  async close(): Promise<void> {
    this.#pubacks?.retire();
    this.#pubacks = undefined;
    const pullers = [...this.#pullers.values()];
    await Promise.all(pullers.map((p) => p.stop()));
    this.#pullers.clear();
    this.#directSub?.unsubscribe();
    this.#directSub = undefined;
    this.#handlers = undefined;
    this.#clientId = undefined;
    if (this.#keepalive !== undefined) clearInterval(this.#keepalive);
    this.#keepalive = undefined;
    // whatever the runtime left unsettled goes back now (in order), not after ack_wait
    const left = [...this.#unsettled.values()].sort((a, b) => a.sequence - b.sequence);
    for (const d of left) d.nak();
    this.#unsettled.clear();
  }

  // --- stores ------------------------------------------------------------------------------

  #snapshotStore(): SnapshotStore {
    const kv = this.#snapshotKv;
    return {
      get: async (address) => {
        const key = this.#route(address).token;
        let entry: Awaited<ReturnType<KV["get"]>>;
        try {
          entry = await kv.get(key);
        } catch (e) {
          throw storageError(`cannot read the snapshot of ${address}`, e, { address });
        }
        if (entry === null || entry.operation !== "PUT") return undefined;
        let record: SnapshotRecord;
        try {
          record = recordCodec.unpack(entry.value) as SnapshotRecord;
        } catch (e) {
          throw new TroupeError(
            ErrorCode.STORAGE_ERROR,
            `the stored snapshot of ${address} cannot be decoded: ${messageOf(e)}`,
            { cause: e, details: { address, revision: entry.revision } },
          );
        }
        const stored: StoredSnapshot = { record, revision: entry.revision };
        return stored;
      },
      put: async (address, record, expectedRevision) => {
        if (!Number.isInteger(expectedRevision) || expectedRevision < 0) {
          throw new TroupeError(
            ErrorCode.INVALID_ARGUMENT,
            `expectedRevision must be an integer >= 0, got ${String(expectedRevision)}`,
          );
        }
        // (routes are cached: no hash and no encoding per snapshot write)
        const route = this.#route(address);
        if (this.#fence !== undefined && !this.#mayActFor(route.shard)) {
          this.counters.fenced++;
          // a conflict: the host abandons this activation (the agent is someone else's now)
          throw new TroupeError(
            ErrorCode.STORAGE_ERROR,
            `not storing the snapshot of ${address}: this worker no longer owns its shard (fenced)`,
            { details: { address, expectedRevision, conflict: true, fenced: true } },
          );
        }
        const key = route.token;
        let bytes: Uint8Array;
        try {
          bytes = recordCodec.pack(record);
        } catch (cause) {
          throw new TroupeError(
            ErrorCode.STORAGE_ERROR,
            `snapshot of ${address} is not serialisable`,
            { cause, details: { address } },
          );
        }
        if (bytes.length + KV_HEADER_ALLOWANCE > this.maxPayload) {
          throw new TroupeError(
            ErrorCode.STORAGE_ERROR,
            `snapshot of ${address} is ${bytes.length} bytes: over the server's max_payload ${this.maxPayload}`,
            { details: { address, bytes: bytes.length, limit: "max_payload" } },
          );
        }
        try {
          if (expectedRevision === 0) return await kv.create(key, bytes);
          // an update is a publish with the revision as expected last subject sequence:
          // through the PubAck window, not a request per write as kv.update makes
          const subject = kvSubject(kv, key);
          if (subject === undefined) return await kv.update(key, bytes, expectedRevision);
          const ack = await this.#publisher().publish(
            subject,
            bytes,
            { lastSubjectSequence: expectedRevision },
            this.#publishTimeoutMs,
          );
          return ack.seq;
        } catch (e) {
          const err = storageError(`cannot store the snapshot of ${address}`, e, {
            address,
            expectedRevision,
          });
          if (err.details?.conflict === true) this.counters.snapshotConflicts++;
          throw err;
        }
      },
      delete: async (address) => {
        try {
          await kv.delete(subjectToken(address));
        } catch (e) {
          throw storageError(`cannot delete the snapshot of ${address}`, e, { address });
        }
      },
    };
  }

  /**
   * Changes of the quarantine bucket as they happen (a KV watch, updates only), so the
   * runtime's view of refused senders follows other processes' quarantines and releases
   * within a round trip instead of its periodic listing.
   */
  watchQuarantine(
    listener: (address: string, entry: QuarantineEntry | undefined) => void,
  ): () => void {
    let stopped = false;
    let stop: (() => void) | undefined;
    const run = async (): Promise<void> => {
      const it = await this.#quarantineKv.watch({ include: "updates" });
      stop = () => it.stop();
      if (stopped) it.stop();
      for await (const e of it) {
        const address = tryAddressFromToken(e.key);
        if (address === undefined) continue;
        if (e.operation !== "PUT") {
          listener(address, undefined);
          continue;
        }
        try {
          listener(address, e.json<QuarantineEntry>());
        } catch (err) {
          this.logger.warn({ err, key: e.key }, "unreadable quarantine entry; ignored");
        }
      }
    };
    run().catch((err: unknown) => {
      // the runtime's periodic listing still applies changes, only later
      if (!stopped) this.logger.warn({ err }, "cannot watch the quarantine bucket");
    });
    return () => {
      stopped = true;
      stop?.();
    };
  }

  #quarantineRegistry(): QuarantineRegistry {
    const kv = this.#quarantineKv;
    const read = async (key: string): Promise<QuarantineEntry | undefined> => {
      const entry = await kv.get(key);
      if (entry === null || entry.operation !== "PUT") return undefined;
      try {
        return entry.json<QuarantineEntry>();
      } catch (e) {
        throw new TroupeError(
          ErrorCode.STORAGE_ERROR,
          `unreadable quarantine entry ${key}: ${messageOf(e)}`,
          { cause: e },
        );
      }
    };
    return {
      get: async (address) => {
        try {
          return await read(subjectToken(address));
        } catch (e) {
          throw storageError(`cannot read the quarantine entry of ${address}`, e, { address });
        }
      },
      set: async (entry) => {
        try {
          await kv.put(subjectToken(entry.address), JSON.stringify(entry));
        } catch (e) {
          throw storageError(`cannot quarantine ${entry.address}`, e, {
            address: entry.address,
          });
        }
      },
      delete: async (address) => {
        try {
          await kv.delete(subjectToken(address));
        } catch (e) {
          throw storageError(`cannot release ${address}`, e, { address });
        }
      },
      list: async () => {
        try {
          const keys: string[] = [];
          for await (const k of await kv.keys()) keys.push(k);
          const entries = await Promise.all(keys.map((k) => read(k)));
          return entries.filter((e): e is QuarantineEntry => e !== undefined);
        } catch (e) {
          throw storageError("cannot list the quarantine", e);
        }
      },
    };
  }

  #parkingLot(): ParkingLot {
    const stream = this.names.parkedStream;
    const decoder = (bytes: Uint8Array): Frame | undefined => {
      try {
        return decodeFrame(bytes, this.limits);
      } catch {
        return undefined;
      }
    };
    return {
      park: async (entry) => {
        let payload: Uint8Array = entry.bytes ?? new Uint8Array(0);
        if (entry.bytes === undefined && entry.frame !== undefined) {
          try {
            payload = encodeFrame(entry.frame, this.limits);
          } catch {
            payload = new Uint8Array(0);
          }
        }
        const h = natsHeaders();
        h.set("Troupe-Reason", headerValue(entry.reason));
        h.set("Troupe-Code", headerValue(entry.code));
        h.set("Troupe-To", headerValue(entry.to));
        h.set("Troupe-Sequence", String(entry.sequence));
        h.set("Troupe-At", String(entry.at));
        if (payload.length + 2 * MAX_HEADER_VALUE + 512 > this.maxPayload) {
          h.set("Troupe-Truncated", String(payload.length));
          payload = new Uint8Array(0);
        }
        const token = entry.to.length > 0 ? subjectToken(entry.to) : "_";
        const opts: PublishOptions = { headers: h };
        // the same inbox message parked again (redelivered after a crash) is stored once
        if (entry.sequence > 0) opts.msgID = `parked:${entry.sequence}:${entry.code}`;
        await this.#publishUntilStored(this.names.parkedSubject(token), payload, opts, (e) =>
          transportError(`could not park a message for ${entry.to}`, e, {
            to: entry.to,
            sequence: entry.sequence,
          }),
        );
        this.counters.parked++;
      },
      list: async (limit = 100) => {
        if (!Number.isInteger(limit) || limit < 1) return [];
        const n = Math.min(limit, 1000);
        try {
          const info = await this.jsm.streams.info(stream);
          const { first_seq: first, last_seq: last, messages } = info.state;
          if (messages === 0) return [];
          const from = Math.max(first, last - n + 1);
          const seqs = Array.from({ length: last - from + 1 }, (_, i) => from + i);
          const msgs = await Promise.all(
            seqs.map((seq) =>
              this.jsm.streams.getMessage(stream, { seq }).catch((e: unknown) => {
                // deleted (aged out) meanwhile
                if (/no message found/i.test(messageOf(e))) return null;
                throw e;
              }),
            ),
          );
          const out: ParkedFrame[] = [];
          for (const m of msgs) {
            if (m === null) continue;
            const hdr = m.header;
            const sequence = Number(hdr.get("Troupe-Sequence"));
            const at = Number(hdr.get("Troupe-At"));
            const p: ParkedFrame = {
              sequence: Number.isFinite(sequence) ? sequence : 0,
              to: hdr.get("Troupe-To"),
              reason: hdr.get("Troupe-Reason"),
              code: hdr.get("Troupe-Code"),
              at: Number.isFinite(at) && at > 0 ? at : m.time.getTime(),
            };
            if (m.data.length > 0) {
              p.bytes = m.data;
              const frame = decoder(m.data);
              if (frame !== undefined) p.frame = frame;
            }
            out.push(p);
          }
          return out;
        } catch (e) {
          throw transportError("cannot read the parked frames", e);
        }
      },
      count: async () => {
        try {
          return (await this.jsm.streams.info(stream)).state.messages;
        } catch (e) {
          throw transportError("cannot count the parked frames", e);
        }
      },
      hold: (message) => this.#hold(message),
      ...(this.#heldAtomic ? { holdMany: (messages) => this.#holdMany(messages) } : {}),
      held: (address, options) => this.#held(address, options),
      heldCount: async (address) => {
        const subject = this.names.heldSubject(subjectToken(address));
        try {
          const info = await this.jsm.streams.info(this.names.heldStream, {
            subjects_filter: subject,
          });
          return info.state.subjects?.[subject] ?? 0;
        } catch (e) {
          throw transportError(`cannot count the held messages of ${address}`, e, { address });
        }
      },
      heldCounts: () => this.#heldCounts(),
      clearHeld: async (address) => {
        // every held message of it is delivered and stored: what is left are stale copies
        await this.#heldPurges.get(address)?.running;
        try {
          await this.jsm.streams.purge(this.names.heldStream, {
            filter: this.names.heldSubject(subjectToken(address)),
          });
        } catch (e) {
          throw transportError(`cannot clear the held messages of ${address}`, e, { address });
        }
        this.#heldCursor.delete(address);
      },
    };
  }

  async #heldCounts(): Promise<Map<string, number>> {
    let subjects: Record<string, number> | undefined;
    try {
      const info = await this.jsm.streams.info(this.names.heldStream, {
        subjects_filter: this.names.heldSubjects,
      });
      subjects = info.state.subjects;
    } catch (e) {
      throw transportError("cannot count the held messages", e);
    }
    const out = new Map<string, number>();
    for (const [subject, n] of Object.entries(subjects ?? {})) {
      const parts = subject.split(".");
      const address = tryAddressFromToken(parts[parts.length - 1] ?? "");
      if (address !== undefined && n > 0) out.set(address, n);
    }
    return out;
  }

  /**
   * Holds a quarantined agent's message in the parked stream, on the agent's held subject,
   * with its inbox sequence. The message id is derived from that sequence, so a redelivered
   * message held again (a crash between storing and acknowledging) is stored once.
   */
  /**
   * Holds consecutive messages of one agent in atomic batches of up to HOLD_BATCH: each batch
   * is stored whole or not at all, and the next starts only once it is, so the held stream
   * keeps inbox order whatever fails. Two round trips a batch instead of one a message. No
   * message ids (atomic batches take none): a batch stored whose acknowledgement was lost is
   * stored again after it, and release skips that copy (its sequences are behind it).
   */
  async #holdMany(messages: readonly HeldMessage[]): Promise<{ stored: number; error?: unknown }> {
    let stored = 0;
    while (stored < messages.length) {
      const chunk = messages.slice(stored, stored + HOLD_BATCH);
      const to = chunk[0]!.to;
      try {
        if (chunk.length === 1) {
          await this.#hold(chunk[0]!);
        } else {
          const subject = this.names.heldSubject(subjectToken(to));
          const parts = chunk.map((m) => this.#heldPart(m));
          const timeout = this.#publishTimeoutMs;
          const first = parts[0]!;
          const batch = await this.js.startBatch(subject, first.payload, {
            headers: first.headers,
            timeout,
          });
          for (const p of parts.slice(1, -1)) batch.add(subject, p.payload, { headers: p.headers });
          const last = parts[parts.length - 1]!;
          await batch.commit(subject, last.payload, { headers: last.headers, timeout });
          this.counters.held += chunk.length;
        }
        stored += chunk.length;
      } catch (e) {
        const first = chunk[0]!;
        return {
          stored,
          error:
            e instanceof TroupeError
              ? e
              : transportError(
                  `could not hold messages ${first.sequence}… (${chunk.length}) for ${to}`,
                  e,
                  { to, sequence: first.sequence },
                ),
        };
      }
    }
    return { stored };
  }

  /** A held message's payload and headers (without an id). */
  #heldPart(message: HeldMessage): { payload: Uint8Array; headers: MsgHdrs } {
    const { to, sequence } = message;
    let payload: Uint8Array;
    try {
      payload = message.bytes ?? encodeFrame(message.frame!, this.limits);
    } catch (e) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        `cannot hold message ${sequence} for ${to}: ${messageOf(e)}`,
        { cause: e, details: { to, sequence } },
      );
    }
    if (payload.length + HOLD_HEADERS_MAX > this.maxPayload) {
      throw new TroupeError(
        ErrorCode.LIMIT_EXCEEDED,
        `message ${sequence} for ${to} is too large to hold next to its headers (max_payload ${this.maxPayload})`,
        { details: { to, sequence, bytes: payload.length, limit: "max_payload" } },
      );
    }
    const headers = natsHeaders();
    headers.set(HELD_HEADER, "quarantine");
    headers.set("Troupe-Sequence", String(sequence));
    return { payload, headers };
  }

  async #hold(message: HeldMessage): Promise<void> {
    const { to, sequence } = message;
    const { payload, headers: h } = this.#heldPart(message);
    const msgID = `held:${sequence}`;
    await this.#publishUntilStored(
      this.names.heldSubject(subjectToken(to)),
      payload,
      { msgID, headers: h },
      (e) => transportError(`could not hold message ${sequence} for ${to}`, e, { to, sequence }),
    );
    this.counters.held++;
  }

  /**
   * One JetStream publish, repeated (same message id, so stored once) while it fails
   * transiently and the append timeout allows; then `failure(e)`.
   */
  async #publishUntilStored(
    subject: string,
    payload: Uint8Array,
    opts: PublishOptions,
    failure: (e: unknown) => Error,
  ): Promise<void> {
    const deadline = Date.now() + this.#appendTimeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#publisher().publish(subject, payload, opts, this.#publishTimeoutMs);
        return;
      } catch (e) {
        if (!isTransient(e) || Date.now() >= deadline) throw failure(e);
        await delay(backoffMs(attempt));
      }
    }
  }

  /** Where the last page of each agent's held messages ended: the next page starts there. */
  readonly #heldCursor = new Map<string, { after: number; streamSeq: number }>();
  /** Per agent: purges of delivered held messages on their way (a read waits for them). */
  readonly #heldPurges = new Map<string, { upTo: number; running: Promise<void> | undefined }>();

  async #held(
    address: string,
    { after, limit }: { after: number; limit: number },
  ): Promise<Delivery[]> {
    const token = subjectToken(address);
    const subject = this.names.heldSubject(token);
    const stream = this.names.heldStream;
    await this.#heldPurges.get(address)?.running;
    const cursor = this.#heldCursor.get(address);
    const startSeq = cursor !== undefined && cursor.after === after ? cursor.streamSeq + 1 : 1;
    const out: Delivery[] = [];
    try {
      const info = await this.jsm.streams.info(stream, { subjects_filter: subject });
      if ((info.state.subjects?.[subject] ?? 0) === 0) return out;
      const consumer = await this.js.consumers.get(stream, {
        filter_subjects: [subject],
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: startSeq,
      });
      let pending = (await consumer.info()).num_pending;
      while (pending > 0 && out.length < limit) {
        const batch = await consumer.fetch({
          max_messages: Math.min(pending, limit - out.length),
          expires: 5_000,
        });
        let got = 0;
        for await (const m of batch) {
          got++;
          pending = m.info.pending;
          const sequence = Number(m.headers?.get("Troupe-Sequence"));
          if (Number.isSafeInteger(sequence) && sequence > after) {
            out.push(new HeldDelivery(this, address, sequence, m.seq, m.data));
            this.#heldCursor.set(address, { after: sequence, streamSeq: m.seq });
          }
          if (pending === 0 || out.length >= limit) break;
        }
        if (got === 0) {
          if (out.length > 0) break;
          // an empty page would read as "all delivered" and end the release: fail, retry later
          throw new Error(`the server sent none of the ${pending} held message(s) pending`);
        }
      }
    } catch (e) {
      throw transportError(`cannot read the held messages of ${address}`, e, { address });
    }
    return out;
  }

  /**
   * @internal A held message was delivered and its effects stored: purge it and everything
   * held before it for this agent (delivered in order before it). One purge per batch.
   */
  heldDelivered(address: string, streamSeq: number): void {
    let p = this.#heldPurges.get(address);
    if (p === undefined) {
      p = { upTo: 0, running: undefined };
      this.#heldPurges.set(address, p);
    }
    if (streamSeq <= p.upTo) return;
    p.upTo = streamSeq;
    const state = p;
    if (state.running !== undefined) return;
    state.running = (async () => {
      let done = 0;
      while (done < state.upTo) {
        const upTo = state.upTo;
        try {
          await this.jsm.streams.purge(this.names.heldStream, {
            filter: this.names.heldSubject(subjectToken(address)),
            seq: upTo + 1,
          });
        } catch (err) {
          // left in the lot: the next release skips it (its sequence is in the snapshot)
          this.logger.warn({ err, agent: address }, "could not remove delivered held messages");
        }
        done = upTo;
      }
      state.running = undefined;
      if (this.#heldPurges.get(address) === state) this.#heldPurges.delete(address);
    })();
  }
}

const HELD_HEADER = "Troupe-Held";

/** A held message handed back for release; acknowledging it removes it from the lot. */
class HeldDelivery implements Delivery {
  readonly redelivered = true;
  readonly #owner: NatsBackendImpl;
  readonly to: string;
  readonly sequence: number;
  readonly #streamSeq: number;
  readonly bytes: Uint8Array;
  #settled = false;

  constructor(
    owner: NatsBackendImpl,
    to: string,
    sequence: number,
    streamSeq: number,
    bytes: Uint8Array,
  ) {
    this.#owner = owner;
    this.to = to;
    this.sequence = sequence;
    this.#streamSeq = streamSeq;
    this.bytes = bytes;
  }

  ack(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#owner.heldDelivered(this.to, this.#streamSeq);
  }

  nak(): void {
    // stays held, in its place
  }
}

const noop = () => {};
const silent: Logger = { debug: noop, info: noop, warn: noop, error: noop };

/**
 * A Backend on NATS JetStream for `createRuntime({ backend })`. Ensures the namespace
 * (streams, consumers, buckets, config) unless `namespaceInfo` says it is done. Pulls no
 * shard until told to (`shards`, or `ownShards` — a worker does, a client does not).
 */
export async function createNatsBackend(options: NatsBackendOptions): Promise<NatsBackend> {
  const { nc } = options;
  if (nc === undefined || typeof nc.publish !== "function") {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, "createNatsBackend needs a NATS connection (nc)");
  }
  const namespace = options.namespace ?? options.namespaceInfo?.namespace ?? DEFAULT_NAMESPACE;
  for (const [name, v] of [
    ["appendTimeoutMs", options.appendTimeoutMs],
    ["publishTimeoutMs", options.publishTimeoutMs],
    ["pullBatch", options.pullBatch],
  ] as const) {
    if (v !== undefined && (typeof v !== "number" || !Number.isFinite(v) || v < 1)) {
      throw new TroupeError(ErrorCode.CONFIG_ERROR, `${name} must be a number >= 1`);
    }
  }
  let ns = options.namespaceInfo;
  if (ns === undefined || ns.namespace !== namespace) {
    ns = await ensureNamespace(nc, {
      namespace,
      ...(options.shardCount === undefined ? {} : { shardCount: options.shardCount }),
      ...(options.replicas === undefined ? {} : { replicas: options.replicas }),
      ...(options.logger === undefined ? {} : { logger: options.logger }),
    });
  } else if (options.shardCount !== undefined && options.shardCount !== ns.shardCount) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `namespace "${namespace}" has ${ns.shardCount} shards, not ${options.shardCount}`,
    );
  }
  let jsm: JetStreamManager;
  let snapshots: KV;
  let quarantine: KV;
  try {
    jsm = await jetstreamManager(nc);
    const kvm = new Kvm(nc);
    [snapshots, quarantine] = await Promise.all([
      kvm.open(ns.names.snapshotsBucket),
      kvm.open(ns.names.quarantineBucket),
    ]);
  } catch (e) {
    throw transportError(`cannot open the JetStream objects of namespace "${namespace}"`, e);
  }
  return new NatsBackendImpl(nc, jsm, ns, { snapshots, quarantine }, options);
}
