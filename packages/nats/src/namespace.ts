/**
 * A namespace's JetStream objects as docs/cluster.md names them (streams, consumers, KV
 * buckets, subjects), the address ↔ subject-token mapping, and `ensureNamespace`, which
 * creates or checks all of them, safely from several processes at once.
 */

import {
  AckPolicy,
  type ConsumerConfig,
  type ConsumerInfo,
  DeliverPolicy,
  DiscardPolicy,
  type JetStreamManager,
  jetstreamManager,
  ReplayPolicy,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
  type StreamInfo,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import { type NatsConnection, nanos } from "@nats-io/transport-node";
import type { Logger } from "@troupe/runtime";
import { agentId, ErrorCode, fromHex, parseAgentAddress, shardOf, TroupeError } from "@troupe/wire";
import {
  ApiCode,
  apiCode,
  isConsumerNotFound,
  isStreamNotFound,
  isTransient,
  isWrongLastSequence,
  messageOf,
  transportError,
} from "./errors.js";
import {
  checkServer,
  requireServerFeature,
  ServerFeature,
  type ServerLimits,
  serverHas,
} from "./server.js";

const NAMESPACE_PATTERN = /^[a-z][a-z0-9-]{0,31}$/;

export const DEFAULT_NAMESPACE = "default";
export const DEFAULT_SHARD_COUNT = 64;
export const MAX_SHARD_COUNT = 65_536;
const DAY_MS = 24 * 60 * 60 * 1000;
export const DEFAULT_INBOX_MAX_AGE_MS = 7 * DAY_MS;
export const DEFAULT_PARKED_MAX_AGE_MS = 30 * DAY_MS;
export const DEFAULT_DUPLICATE_WINDOW_MS = 2 * 60 * 1000;
export const ACK_WAIT_MS = 30_000;
export const MAX_ACK_PENDING = 1024;
export const CONFIG_KEY = "config";

/** Every name of a namespace's JetStream objects and subjects (docs/cluster.md). */
export interface NamespaceNames {
  namespace: string;
  /** `TROUPE_<NS>_INBOX` */
  inboxStream: string;
  /** `TROUPE_<NS>_PARKED` */
  parkedStream: string;
  /** `TROUPE_<NS>_HELD`: quarantined agents' messages, kept until release (no max age). */
  heldStream: string;
  /** `troupe.<ns>.in.>` */
  inboxSubjects: string;
  /** `troupe.<ns>.parked.>` */
  parkedSubjects: string;
  /** `troupe.<ns>.in.<shard>.<token>` */
  inboxSubject(shard: number, token: string): string;
  /** `troupe.<ns>.in.<shard>.>`: the filter of consumer `shard-<n>`. */
  shardFilter(shard: number): string;
  /** `shard-<n>` */
  shardConsumer(shard: number): string;
  /** `troupe.<ns>.parked.<token>` */
  parkedSubject(token: string): string;
  /**
   * `troupe.<ns>.held.<token>`: a quarantined agent's held messages, in stream
   * `TROUPE_<NS>_HELD`: a subject per agent so release can read and purge exactly them, in
   * order, and one stream info counts them per agent.
   */
  heldSubject(token: string): string;
  /** `troupe.<ns>.held.*`: every agent's held messages. */
  heldSubjects: string;
  /** `troupe.<ns>.client.<clientId>` */
  clientSubject(clientId: string): string;
  /** `troupe.<ns>.ctl.<verb>` */
  controlSubject(verb: string): string;
  /** `troupe.<ns>.ctl.worker.<workerId>.<verb>` */
  workerControlSubject(workerId: string, verb: string): string;
  /** `troupe_<ns>_snapshots` */
  snapshotsBucket: string;
  /** `troupe_<ns>_quarantine` */
  quarantineBucket: string;
  /** `troupe_<ns>_members` */
  membersBucket: string;
  /** `troupe_<ns>_cluster` */
  clusterBucket: string;
  /** The key of the namespace's config record in the cluster bucket. */
  configKey: string;
}

export function validateNamespace(namespace: unknown): asserts namespace is string {
  if (typeof namespace !== "string" || !NAMESPACE_PATTERN.test(namespace)) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `invalid namespace ${JSON.stringify(namespace)}: use 1-32 characters of a-z, 0-9 or '-', starting with a letter`,
      { details: { namespace } },
    );
  }
}

const SUBJECT_TOKEN = /^[^\s.*>]+$/;

function checkToken(what: string, token: string): void {
  if (typeof token !== "string" || !SUBJECT_TOKEN.test(token)) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `invalid ${what} ${JSON.stringify(token)}: a subject token has no '.', '*', '>' or spaces`,
    );
  }
}

function checkShard(shard: number): void {
  if (!Number.isInteger(shard) || shard < 0 || shard >= MAX_SHARD_COUNT) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, `invalid shard ${String(shard)}`);
  }
}

export function namespaceNames(namespace: string): NamespaceNames {
  validateNamespace(namespace);
  const NS = namespace.toUpperCase().replaceAll("-", "_");
  const base = `troupe.${namespace}`;
  const bucket = `troupe_${namespace}`;
  return {
    namespace,
    inboxStream: `TROUPE_${NS}_INBOX`,
    parkedStream: `TROUPE_${NS}_PARKED`,
    heldStream: `TROUPE_${NS}_HELD`,
    inboxSubjects: `${base}.in.>`,
    parkedSubjects: `${base}.parked.>`,
    inboxSubject: (shard, token) => `${base}.in.${shard}.${token}`,
    shardFilter: (shard) => {
      checkShard(shard);
      return `${base}.in.${shard}.>`;
    },
    shardConsumer: (shard) => {
      checkShard(shard);
      return `shard-${shard}`;
    },
    parkedSubject: (token) => `${base}.parked.${token}`,
    heldSubject: (token) => `${base}.held.${token}`,
    heldSubjects: `${base}.held.*`,
    clientSubject: (clientId) => {
      checkToken("client id", clientId);
      return `${base}.client.${clientId}`;
    },
    controlSubject: (verb) => {
      checkToken("control verb", verb);
      return `${base}.ctl.${verb}`;
    },
    workerControlSubject: (workerId, verb) => {
      checkToken("worker id", workerId);
      checkToken("control verb", verb);
      return `${base}.ctl.worker.${workerId}.${verb}`;
    },
    snapshotsBucket: `${bucket}_snapshots`,
    quarantineBucket: `${bucket}_quarantine`,
    membersBucket: `${bucket}_members`,
    clusterBucket: `${bucket}_cluster`,
    configKey: CONFIG_KEY,
  };
}

// --- addresses and tokens ------------------------------------------------------------------

const BASE64URL = /^[A-Za-z0-9_-]+$/;

/** The subject token (and KV key) of an address: base64url of its UTF-8 bytes, no padding. */
export function subjectToken(address: string): string {
  if (typeof address !== "string" || address.length === 0) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `invalid address ${JSON.stringify(address)}: empty`,
    );
  }
  return Buffer.from(address, "utf8").toString("base64url");
}

/** The address a subject token stands for; INVALID_ARGUMENT when it is not one we made. */
export function addressFromToken(token: string): string {
  const address = tryAddressFromToken(token);
  if (address === undefined) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `${JSON.stringify(token)} is not a subject token of an address (base64url of UTF-8)`,
    );
  }
  return address;
}

/** Like addressFromToken, but undefined for an invalid token (the hot path does not throw). */
export function tryAddressFromToken(token: string): string | undefined {
  if (typeof token !== "string" || !BASE64URL.test(token) || token.length % 4 === 1) {
    return undefined;
  }
  const bytes = Buffer.from(token, "base64url");
  const address = bytes.toString("utf8");
  // canonical only: invalid UTF-8 or non-zero padding bits would not round-trip
  if (address.length === 0 || Buffer.from(address, "utf8").toString("base64url") !== token) {
    return undefined;
  }
  return address;
}

/**
 * The shard of an address: agents `type/key` by their agent id, bound callables `#<hex>` by
 * the id the hex spells. Client inboxes (`~id`) have no shard: they are not durable.
 */
export function shardOfAddress(address: string, shardCount: number): number {
  if (typeof address === "string" && address.startsWith("#")) {
    const hex = address.slice(1);
    if (hex.length === 0) {
      throw new TroupeError(ErrorCode.INVALID_ARGUMENT, `invalid address "#": no agent id`);
    }
    return shardOf(fromHex(hex), shardCount);
  }
  if (typeof address === "string" && address.startsWith("~")) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `${address} is a client inbox: it has no shard (send it directly)`,
    );
  }
  const { type, key } = parseAgentAddress(address);
  return shardOf(agentId(type, key), shardCount);
}

// --- provisioning --------------------------------------------------------------------------

export interface EnsureNamespaceOptions {
  /** Default "default". */
  namespace?: string;
  /**
   * Shards of a new namespace (default 64). For an existing one: when given, it must match
   * the stored count (CONFIG_ERROR otherwise); when omitted, the stored count is used.
   */
  shardCount?: number;
  /** Replicas of every stream and bucket: 1, or 3 in a cluster. Default 1. */
  replicas?: number;
  /**
   * Whether this call may create the namespace (default true). Workers and clients pass false:
   * the coordinator creates a namespace with the shard count and replicas it is configured
   * with, and a worker that came up first must not fix other values. A namespace that does
   * not exist then gives an INVALID_STATE error that `isNamespaceMissing` recognises; the
   * objects of one that does are checked (and ones missing, e.g. deleted by hand, recreated)
   * with its own replicas.
   */
  create?: boolean;
  /**
   * How long the inbox keeps messages (the replay history), ms. A new inbox gets it (default
   * 7 days). An existing inbox with another `max_age` is changed to it when it is given and
   * this call may create the namespace (the coordinator's setting is the namespace's; a
   * shorter one makes the server delete older messages at once); omitted, or with
   * `create: false`, an existing inbox keeps its own.
   */
  maxAgeMs?: number;
  /** Message-id dedup window of the inbox, ms. Default 2 minutes. */
  duplicateWindowMs?: number;
  logger?: Logger;
}

export interface NamespaceInfo {
  namespace: string;
  names: NamespaceNames;
  shardCount: number;
  replicas: number;
  /** When the namespace was created (its config record). */
  createdAt: number;
  /** True when this call created the config record (a new namespace). */
  created: boolean;
  server: ServerLimits;
  /** The inbox stream's dedup window, ms (what the server has). */
  duplicateWindowMs: number;
  /** The inbox stream's max_age, ms (what the server has; 0: no limit): the replay history. */
  maxAgeMs: number;
  /**
   * The held stream takes atomic batch publishes (nats-server 2.12+): a quarantined agent's
   * messages are held many at a time, all or none, in order.
   */
  heldAtomic?: boolean;
}

interface ConfigRecord {
  version: 1;
  shardCount: number;
  createdAt: number;
}

function positiveInt(name: string, v: unknown, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `${name} must be an integer 1..${max}, got ${String(v)}`,
      { details: { [name]: v } },
    );
  }
  return v;
}

function positiveMs(name: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 1) {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, `${name} must be a number of ms > 0`, {
      details: { [name]: v },
    });
  }
  return Math.round(v);
}

/** A stream configuration as Troupe sends it (the server fills in the rest). */
export type StreamSpec = Partial<StreamConfig> & {
  name: string;
  subjects: string[];
  retention: StreamConfig["retention"];
  num_replicas: number;
  storage: StreamConfig["storage"];
  duplicate_window: number;
};

export function inboxStreamConfig(
  names: NamespaceNames,
  o: { replicas: number; maxAgeMs: number; duplicateWindowMs: number; maxPayload: number },
): StreamSpec {
  return {
    name: names.inboxStream,
    description: `Troupe inbox of namespace ${names.namespace}`,
    subjects: [names.inboxSubjects],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    max_age: nanos(o.maxAgeMs),
    duplicate_window: nanos(o.duplicateWindowMs),
    max_msg_size: o.maxPayload,
    discard: DiscardPolicy.Old,
    allow_direct: true,
    metadata: { "troupe.kind": "inbox", "troupe.namespace": names.namespace },
  };
}

export function parkedStreamConfig(
  names: NamespaceNames,
  o: { replicas: number; maxPayload: number; duplicateWindowMs: number },
): StreamSpec {
  return {
    name: names.parkedStream,
    description: `Troupe parked frames of namespace ${names.namespace}`,
    subjects: [names.parkedSubjects],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    max_age: nanos(DEFAULT_PARKED_MAX_AGE_MS),
    duplicate_window: nanos(o.duplicateWindowMs),
    max_msg_size: o.maxPayload,
    discard: DiscardPolicy.Old,
    allow_direct: true,
    metadata: { "troupe.kind": "parked", "troupe.namespace": names.namespace },
  };
}

/**
 * The held stream: no max age and no size limit that could discard, because a held message
 * is one the agent has not processed yet (nothing is dropped silently). Release purges them.
 */
export function heldStreamConfig(
  names: NamespaceNames,
  o: { replicas: number; maxPayload: number; duplicateWindowMs: number; atomic?: boolean },
): StreamSpec {
  return {
    ...(o.atomic ? { allow_atomic: true } : {}),
    name: names.heldStream,
    description: `Troupe messages held for quarantined agents of namespace ${names.namespace}`,
    subjects: [names.heldSubjects],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    max_age: 0,
    duplicate_window: nanos(o.duplicateWindowMs),
    max_msg_size: o.maxPayload,
    discard: DiscardPolicy.New,
    allow_direct: true,
    metadata: { "troupe.kind": "held", "troupe.namespace": names.namespace },
  };
}

export function shardConsumerConfig(names: NamespaceNames, shard: number): Partial<ConsumerConfig> {
  const name = names.shardConsumer(shard);
  return {
    durable_name: name,
    name,
    description: `Troupe shard ${shard}`,
    filter_subject: names.shardFilter(shard),
    ack_policy: AckPolicy.Explicit,
    ack_wait: nanos(ACK_WAIT_MS),
    max_ack_pending: MAX_ACK_PENDING,
    deliver_policy: DeliverPolicy.All,
    replay_policy: ReplayPolicy.Instant,
    max_deliver: -1,
  };
}

/** Stream fields a namespace cannot work without; the rest may differ (with a warning). */
function checkStream(info: StreamInfo, want: StreamSpec, logger: Logger | undefined): void {
  const c = info.config;
  const subjects = c.subjects ?? [];
  if (!want.subjects.every((s) => subjects.includes(s))) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `stream ${want.name} exists with subjects ${JSON.stringify(subjects)}, not ${JSON.stringify(want.subjects)}`,
      { details: { stream: want.name, subjects } },
    );
  }
  if (c.retention !== want.retention) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `stream ${want.name} exists with ${c.retention} retention; Troupe needs ${want.retention}`,
      { details: { stream: want.name, retention: c.retention } },
    );
  }
  const differs: string[] = [];
  if (c.num_replicas !== want.num_replicas) differs.push(`replicas ${c.num_replicas}`);
  if (c.storage !== want.storage) differs.push(`storage ${c.storage}`);
  if (c.duplicate_window !== want.duplicate_window) {
    differs.push(`duplicate_window ${Math.round(c.duplicate_window / 1e6)} ms`);
  }
  if (differs.length > 0) {
    logger?.warn(
      { stream: want.name, differs },
      `stream ${want.name} exists with other settings (${differs.join(", ")}); keeping them`,
    );
  }
}

/**
 * Changes the inbox's `max_age` to `maxAgeMs` when it has another one. The server applies a
 * shorter one at once: what is older is deleted, and replay cannot reach it any more.
 */
async function ensureInboxMaxAge(
  jsm: JetStreamManager,
  info: StreamInfo,
  maxAgeMs: number,
  logger: Logger | undefined,
): Promise<StreamInfo> {
  const stream = info.config.name;
  // compared in ms: what the server echoes back for a long age need not be our float exactly
  const hadMs = Math.round(info.config.max_age / 1e6);
  if (hadMs === maxAgeMs) return info;
  let updated: StreamInfo;
  try {
    updated = await jsm.streams.update(stream, { ...info.config, max_age: nanos(maxAgeMs) });
  } catch (e) {
    throw provisioningError(`cannot change the max_age of stream ${stream}`, e);
  }
  // (0: the stream had no age limit)
  const shorter = hadMs === 0 || maxAgeMs < hadMs;
  logger?.info(
    { stream, fromMs: hadMs, toMs: maxAgeMs },
    `inbox max_age changed from ${formatAge(hadMs)} to ${formatAge(maxAgeMs)}` +
      (shorter
        ? `: the server deletes messages older than ${formatAge(maxAgeMs)} now, and replay reaches back no further`
        : ""),
  );
  return updated;
}

/** The units an age is written in (`--inbox-max-age 12h`, log lines), largest first, ms. */
export const AGE_UNIT_MS = { d: DAY_MS, h: 60 * 60 * 1000, m: 60 * 1000, s: 1000 } as const;

/** An age as the coordinator's --inbox-max-age takes it: `7d`, `90m`, `1500ms`. */
function formatAge(ms: number): string {
  if (ms === 0) return "unlimited";
  const unit = Object.entries(AGE_UNIT_MS).find(([, size]) => ms % size === 0);
  return unit === undefined ? `${ms}ms` : `${ms / unit[1]}${unit[0]}`;
}

async function ensureStream(
  jsm: JetStreamManager,
  want: StreamSpec,
  logger: Logger | undefined,
): Promise<StreamInfo> {
  let info: StreamInfo;
  try {
    info = await jsm.streams.info(want.name);
  } catch (e) {
    if (!isStreamNotFound(e)) throw transportError(`cannot read stream ${want.name}`, e);
    try {
      info = await jsm.streams.add(want);
      logger?.info({ stream: want.name }, `created stream ${want.name}`);
      return info;
    } catch (e2) {
      // another process created it meanwhile (with other settings, or the server would have
      // accepted ours as the same): look at what is there
      if (apiCode(e2) !== ApiCode.STREAM_NAME_IN_USE) {
        throw provisioningError(`cannot create stream ${want.name}`, e2);
      }
      info = await jsm.streams.info(want.name).catch((e3: unknown) => {
        throw transportError(`cannot read stream ${want.name}`, e3);
      });
    }
  }
  checkStream(info, want, logger);
  return info;
}

function checkConsumer(info: ConsumerInfo, want: Partial<ConsumerConfig>): void {
  const c = info.config;
  const filters = c.filter_subjects ?? (c.filter_subject ? [c.filter_subject] : []);
  if (filters.length !== 1 || filters[0] !== want.filter_subject) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `consumer ${want.durable_name} exists with filter ${JSON.stringify(filters)}, not ${want.filter_subject}`,
      { details: { consumer: want.durable_name, filters } },
    );
  }
  if (c.ack_policy !== AckPolicy.Explicit) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `consumer ${want.durable_name} exists with ack policy ${c.ack_policy}; Troupe needs explicit acks`,
      { details: { consumer: want.durable_name } },
    );
  }
  if (c.deliver_subject) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `consumer ${want.durable_name} exists as a push consumer; Troupe pulls`,
      { details: { consumer: want.durable_name } },
    );
  }
}

export async function ensureShardConsumer(
  jsm: JetStreamManager,
  names: NamespaceNames,
  shard: number,
): Promise<ConsumerInfo> {
  const want = shardConsumerConfig(names, shard);
  const name = want.durable_name!;
  let info: ConsumerInfo;
  try {
    info = await jsm.consumers.info(names.inboxStream, name);
  } catch (e) {
    if (!isConsumerNotFound(e)) throw transportError(`cannot read consumer ${name}`, e);
    try {
      return await jsm.consumers.add(names.inboxStream, want);
    } catch (e2) {
      const code = apiCode(e2);
      if (code !== ApiCode.CONSUMER_ALREADY_EXISTS && code !== ApiCode.CONSUMER_NAME_EXISTS) {
        throw provisioningError(`cannot create consumer ${name}`, e2);
      }
      info = await jsm.consumers.info(names.inboxStream, name).catch((e3: unknown) => {
        throw transportError(`cannot read consumer ${name}`, e3);
      });
    }
  }
  // (a consumer resumed from its ack floor has another deliver policy: that is fine)
  checkConsumer(info, want);
  return info;
}

async function ensureBucket(
  kvm: Kvm,
  name: string,
  replicas: number,
  what: string,
  history = 1,
): Promise<KV> {
  try {
    return await kvm.create(name, {
      history,
      replicas,
      storage: StorageType.File,
      description: what,
    });
  } catch (e) {
    throw provisioningError(`cannot create or open KV bucket ${name}`, e);
  }
}

function provisioningError(what: string, e: unknown): TroupeError {
  if (e instanceof TroupeError) return e;
  const code = apiCode(e);
  if (code !== undefined && code !== ApiCode.TEMPORARILY_UNAVAILABLE) {
    // the server refused the configuration (replicas on a single node, limits, …)
    return new TroupeError(ErrorCode.CONFIG_ERROR, `${what}: ${messageOf(e)}`, {
      cause: e,
      details: { apiCode: code },
    });
  }
  return transportError(what, e);
}

/** Runs `fn` over `items` with at most `limit` at a time. */
async function eachLimited<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  });
  await Promise.all(workers);
}

function parseConfig(bytes: Uint8Array): ConfigRecord | undefined {
  try {
    const v = JSON.parse(new TextDecoder().decode(bytes)) as Partial<ConfigRecord> | null;
    if (
      v === null ||
      typeof v !== "object" ||
      typeof v.shardCount !== "number" ||
      !Number.isInteger(v.shardCount) ||
      v.shardCount < 1
    ) {
      return undefined;
    }
    return {
      version: 1,
      shardCount: v.shardCount,
      createdAt: typeof v.createdAt === "number" ? v.createdAt : 0,
    };
  } catch {
    return undefined;
  }
}

/**
 * Runs `step` again while it fails transiently, for up to CONFIG_SETTLE_MS: a stream just
 * created on a JetStream cluster answers "no responders" until its leader is elected.
 */
async function settling<T>(step: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + CONFIG_SETTLE_MS;
  let pause = 50;
  for (;;) {
    try {
      return await step();
    } catch (e) {
      if (!isTransient(e) || Date.now() >= deadline) throw e;
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, 1_000);
    }
  }
}

/** How long a namespace's config may answer "no responders" while its bucket settles, ms. */
const CONFIG_SETTLE_MS = 15_000;

/** Creates the config record once (CAS create), or reads the one that is there. */
async function ensureConfig(
  cluster: KV,
  namespace: string,
  shardCount: number | undefined,
  mayCreate: boolean,
): Promise<{ record: ConfigRecord; created: boolean }> {
  const fresh: ConfigRecord = {
    version: 1,
    shardCount: shardCount ?? DEFAULT_SHARD_COUNT,
    createdAt: Date.now(),
  };
  // (a bucket just created on a JetStream cluster answers "no responders" for a while:
  // `settling` waits that out, so every caller gets a namespace, not that race)
  for (let changes = 0; changes < 5; ) {
    if (mayCreate) {
      try {
        await settling(() => cluster.create(CONFIG_KEY, JSON.stringify(fresh)));
        return { record: fresh, created: true };
      } catch (e) {
        if (!isWrongLastSequence(e)) {
          throw transportError(`cannot write the config of namespace "${namespace}"`, e);
        }
      }
    }
    const entry = await settling(() => cluster.get(CONFIG_KEY)).catch((e: unknown) => {
      throw transportError(`cannot read the config of namespace "${namespace}"`, e);
    });
    if (entry === null || entry.operation !== "PUT") {
      if (!mayCreate) throw namespaceMissing(namespace);
      // deleted between our create and this read: create again
      changes++;
      continue;
    }
    const record = parseConfig(entry.value);
    if (record === undefined) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `namespace "${namespace}" has an unreadable config record: ${entry.string().slice(0, 200)}`,
      );
    }
    if (shardCount !== undefined && shardCount !== record.shardCount) {
      throw new TroupeError(
        ErrorCode.CONFIG_ERROR,
        `namespace "${namespace}" has ${record.shardCount} shards; this process is configured with ${shardCount}. ` +
          "The shard count is fixed when a namespace is created: use the same count, or another namespace.",
        { details: { namespace, stored: record.shardCount, configured: shardCount } },
      );
    }
    return { record, created: false };
  }
  throw new TroupeError(
    ErrorCode.STORAGE_ERROR,
    `the config of namespace "${namespace}" keeps changing underneath`,
    { retryAfterMs: 1000 },
  );
}

function namespaceMissing(namespace: string): TroupeError {
  return new TroupeError(
    ErrorCode.INVALID_STATE,
    `namespace "${namespace}" does not exist yet: a coordinator creates it (troupe-coordinator --namespace ${namespace})`,
    { retryAfterMs: 1000, details: { namespace, missingNamespace: true } },
  );
}

/** True for the error `ensureNamespace({ create: false })` gives when the namespace is not there. */
export function isNamespaceMissing(e: unknown): boolean {
  return e instanceof TroupeError && e.details?.missingNamespace === true;
}

/** The replicas of an existing namespace (its cluster bucket's), or namespaceMissing. */
async function existingReplicas(jsm: JetStreamManager, names: NamespaceNames): Promise<number> {
  try {
    const info = await jsm.streams.info(`KV_${names.clusterBucket}`);
    return info.config.num_replicas;
  } catch (e) {
    if (isStreamNotFound(e)) throw namespaceMissing(names.namespace);
    throw transportError(`cannot read the cluster bucket of namespace "${names.namespace}"`, e);
  }
}

export interface OpenNamespaceOptions {
  namespace?: string;
  /** When given, the namespace must have this many shards. */
  shardCount?: number;
  /** Give up after waiting this long for the namespace to be created, ms. Default: for ever. */
  waitMs?: number;
  /**
   * Stops waiting (a process stopping while it starts): the call then rejects with SHUTDOWN at
   * once, abandoning an attempt under way, and makes no further attempt.
   */
  signal?: AbortSignal;
  logger?: Logger;
}

/**
 * Opens a namespace a coordinator creates, waiting (with backoff, saying so once) until it
 * exists: what workers and clients do, so the coordinator's shard count and replicas win
 * whatever order processes start in. Transient failures (below) are waited out as well.
 */
export function openNamespace(
  nc: NatsConnection,
  options: OpenNamespaceOptions = {},
): Promise<NamespaceInfo> {
  return retrying(() => ensureNamespace(nc, { ...options, create: false }), options);
}

/**
 * ensureNamespace at process start: tried again with backoff while the failure is transient
 * — a fresh JetStream cluster answers "no responders" while it is still electing the leaders
 * of new streams and buckets — instead of failing the process. Configuration errors (a shard
 * count that does not match, settings the server refuses) fail at once.
 */
export function ensureNamespaceRetrying(
  nc: NatsConnection,
  options: EnsureNamespaceOptions & Pick<OpenNamespaceOptions, "waitMs" | "signal"> = {},
): Promise<NamespaceInfo> {
  return retrying(() => ensureNamespace(nc, options), options);
}

async function retrying(
  attempt: () => Promise<NamespaceInfo>,
  options: { namespace?: string; waitMs?: number; signal?: AbortSignal; logger?: Logger },
): Promise<NamespaceInfo> {
  const started = Date.now();
  let delay = 250;
  const said = new Set<string>();
  const what = `namespace "${options.namespace ?? DEFAULT_NAMESPACE}"`;
  for (;;) {
    if (options.signal?.aborted) throw stoppedWaiting(what);
    try {
      return await unlessAborted(attempt(), options.signal, what);
    } catch (e) {
      if (!isTransient(e)) throw e;
      const waited = Date.now() - started;
      if (options.waitMs !== undefined && waited >= options.waitMs) throw e;
      const kind = isNamespaceMissing(e) ? "missing" : "transient";
      if (!said.has(kind)) {
        said.add(kind);
        options.logger?.info(
          {
            namespace: options.namespace ?? DEFAULT_NAMESPACE,
            err: kind === "transient" ? e : undefined,
          },
          kind === "missing"
            ? `${(e as Error).message}; waiting for it`
            : `namespace not ready yet (${messageOf(e)}); trying again`,
        );
      }
      let wait = delay;
      if (options.waitMs !== undefined) wait = Math.min(wait, options.waitMs - waited);
      await pause(Math.max(wait, 1), options.signal);
      delay = Math.min(delay * 2, 5000);
    }
  }
}

/** The error of a wait given up because its signal was aborted: the caller is stopping. */
export function stoppedWaiting(what: string): TroupeError {
  return new TroupeError(ErrorCode.SHUTDOWN, `stopped waiting for ${what}`);
}

/** Resolves after `ms`, or as soon as `signal` is aborted. */
export function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * What `work` gives, or `stoppedWaiting(what)` as soon as `signal` is aborted. Work that
 * finishes after that is handed to `late` (to close what it opened); its failure is ignored.
 */
export function unlessAborted<T>(
  work: Promise<T>,
  signal: AbortSignal | undefined,
  what: string,
  late: (value: T) => void = () => {},
): Promise<T> {
  if (signal === undefined) return work;
  return new Promise<T>((resolve, reject) => {
    const abandon = (): void => {
      reject(stoppedWaiting(what));
      work.then(late, () => {});
    };
    if (signal.aborted) {
      abandon();
      return;
    }
    signal.addEventListener("abort", abandon, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener("abort", abandon);
        resolve(value);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", abandon);
        reject(e);
      },
    );
  });
}

/**
 * Creates, or checks, every JetStream object of a namespace: the inbox and parked streams,
 * one durable consumer per shard, the KV buckets and the config record. Idempotent, and safe
 * when several processes call it at once (objects that now exist with a matching config are
 * fine; the config record is created with compare-and-set, so they all agree on one count).
 */
export async function ensureNamespace(
  nc: NatsConnection,
  options: EnsureNamespaceOptions = {},
): Promise<NamespaceInfo> {
  const namespace = options.namespace ?? DEFAULT_NAMESPACE;
  const names = namespaceNames(namespace);
  const server = checkServer(nc.info);
  requireServerFeature(
    nc.info!,
    "stream metadata and the JetStream features Troupe uses",
    ServerFeature.STREAM_METADATA,
  );
  const shardCount =
    options.shardCount === undefined
      ? undefined
      : positiveInt("shardCount", options.shardCount, MAX_SHARD_COUNT);
  let replicas = positiveInt("replicas", options.replicas ?? 1, 5);
  const maxAgeMs = positiveMs("maxAgeMs", options.maxAgeMs ?? DEFAULT_INBOX_MAX_AGE_MS);
  const duplicateWindowMs = positiveMs(
    "duplicateWindowMs",
    options.duplicateWindowMs ?? DEFAULT_DUPLICATE_WINDOW_MS,
  );
  if (duplicateWindowMs > maxAgeMs) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `maxAgeMs (${maxAgeMs} ms) must be at least duplicateWindowMs (${duplicateWindowMs} ms)`,
      { details: { maxAgeMs, duplicateWindowMs } },
    );
  }
  const logger = options.logger;
  const mayCreate = options.create ?? true;

  let jsm: JetStreamManager;
  try {
    jsm = await jetstreamManager(nc);
  } catch (e) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `JetStream is not available on nats-server ${server.version}: ${messageOf(e)}`,
      { cause: e },
    );
  }
  const kvm = new Kvm(nc);

  if (!mayCreate) replicas = await existingReplicas(jsm, names);
  // the config first: it says how many shard consumers there are
  const cluster = await ensureBucket(
    kvm,
    names.clusterBucket,
    replicas,
    `Troupe cluster records of namespace ${namespace}`,
  );
  const { record, created } = await ensureConfig(cluster, namespace, shardCount, mayCreate);
  if (created) {
    logger?.info(
      { namespace, shardCount: record.shardCount },
      `created namespace "${namespace}" with ${record.shardCount} shards`,
    );
  }

  let inbox = await ensureStream(
    jsm,
    inboxStreamConfig(names, {
      replicas,
      maxAgeMs,
      duplicateWindowMs,
      maxPayload: server.maxPayload,
    }),
    logger,
  );
  // workers and clients never change it: only the coordinator's setting counts
  if (mayCreate && options.maxAgeMs !== undefined) {
    inbox = await ensureInboxMaxAge(jsm, inbox, maxAgeMs, logger);
  }
  const atomic = serverHas(nc.info!, ServerFeature.ATOMIC_BATCH);
  const [, held] = await Promise.all([
    ensureStream(
      jsm,
      parkedStreamConfig(names, {
        replicas,
        maxPayload: server.maxPayload,
        duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS,
      }),
      logger,
    ),
    ensureStream(
      jsm,
      heldStreamConfig(names, {
        replicas,
        maxPayload: server.maxPayload,
        duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS,
        atomic,
      }),
      logger,
    ),
    ensureBucket(kvm, names.snapshotsBucket, replicas, `Troupe agent snapshots of ${namespace}`),
    ensureBucket(kvm, names.quarantineBucket, replicas, `Troupe quarantine of ${namespace}`),
    ensureBucket(kvm, names.membersBucket, replicas, `Troupe workers of ${namespace}`),
  ]);
  const shards = Array.from({ length: record.shardCount }, (_, i) => i);
  await eachLimited(shards, 16, (shard) => settling(() => ensureShardConsumer(jsm, names, shard)));
  let heldAtomic = held.config.allow_atomic === true;
  if (atomic && !heldAtomic) {
    // a held stream made before atomic batches were used: turn them on
    try {
      await jsm.streams.update(names.heldStream, { ...held.config, allow_atomic: true });
      heldAtomic = true;
    } catch (e) {
      logger?.warn(
        { stream: names.heldStream, err: e },
        "cannot allow atomic batches on the held stream; holding one message at a time",
      );
    }
  }

  return {
    namespace,
    names,
    shardCount: record.shardCount,
    replicas: inbox.config.num_replicas,
    createdAt: record.createdAt,
    created,
    server,
    duplicateWindowMs: Math.round(inbox.config.duplicate_window / 1e6),
    maxAgeMs: Math.round(inbox.config.max_age / 1e6),
    heldAtomic,
  };
}
