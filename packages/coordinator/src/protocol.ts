/**
 * The cluster's shared records (docs/cluster.md): members entries, the leader lease, the
 * assignment, release confirmations and the control API's answers, with their JSON codecs.
 */
import { namespaceNames } from "@troupe/nats/internal";
import type { ReplayStep } from "@troupe/runtime";
import { ErrorCode, TroupeError } from "@troupe/wire";

/** A worker's entry in `troupe_<ns>_members`, put every heartbeat. */
export interface MemberEntry {
  id: string;
  pid: number;
  host: string;
  startedAt: number;
  heartbeatAt: number;
  agentTypes: string[];
  activeAgents: number;
  draining: boolean;
}

/** `leader` in the cluster bucket. `term` is the lease revision it was taken at. */
export interface LeaderLease {
  id: string;
  expiresAt: number;
  term?: number;
}

export interface ShardAssignment {
  owner: string | null;
  epoch: number;
  /** Set while the named worker is giving the shard up (owner is null meanwhile). */
  releasing?: string;
}

/** `assignment` in the cluster bucket; written only by the leader. */
export interface Assignment {
  version: number;
  shards: ShardAssignment[];
}

/** `release.<shard>`: a worker confirms it gave a shard up at this epoch. */
export interface ReleaseConfirmation {
  worker: string;
  epoch: number;
}

export interface WorkerSummary {
  id: string;
  shards: number[];
  activeAgents: number;
  heartbeatAgeMs: number;
  draining: boolean;
}

/** What `troupe.<ns>.ctl.status` answers. */
export interface ClusterStatus {
  namespace: string;
  shardCount: number;
  /** The leader's id, or null when no lease is held. */
  leader: string | null;
  /** The leader's term: the lease revision it was taken at (grows with every new leader). */
  epoch: number;
  /** The assignment's version (grows with every change of the assignment). */
  assignmentVersion: number;
  workers: WorkerSummary[];
  unassigned: number[];
}

/** What `troupe.<ns>.ctl.worker.<id>.status` answers. */
export interface WorkerStatus {
  id: string;
  shards: number[];
  activeAgents: number;
  draining: boolean;
  stats: Record<string, number>;
  /** Times this worker fenced shards (its lease lapsed, or the assignment moved them on). */
  fences?: number;
  /** The backend's counters (NatsBackendStats: fenced, snapshotConflicts, resyncs, …). */
  backend?: Record<string, number>;
}

/** The error answer of the control API. */
export interface ControlError {
  error: { code: string; message: string };
}

export const LEADER_KEY = "leader";
export const ASSIGNMENT_KEY = "assignment";
export const CONFIG_KEY = "config";
export const RELEASE_PREFIX = "release.";
export const releaseKey = (shard: number): string => `${RELEASE_PREFIX}${shard}`;

/** `troupe.<ns>.ctl.<verb>`: served by the leader, in the queue group below. */
export const controlSubject = (namespace: string, verb: string): string =>
  namespaceNames(namespace).controlSubject(verb);
/** `troupe.<ns>.ctl.worker.<workerId>.<verb>`: served by that worker. */
export const workerControlSubject = (namespace: string, workerId: string, verb: string): string =>
  namespaceNames(namespace).workerControlSubject(workerId, verb);
export const CONTROL_QUEUE = "troupe-coordinator";

/**
 * Worker and coordinator ids are KV keys and subject tokens: letters, digits, `-` and `_`.
 */
const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export function validateNodeId(kind: string, id: string): void {
  if (typeof id !== "string" || !ID_PATTERN.test(id)) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `invalid ${kind} id ${JSON.stringify(id)}: use 1-64 characters of A-Z, a-z, 0-9, '-' or '_'`,
    );
  }
}

/** A default node id from a host name and pid, made safe for subjects and keys. */
export function defaultNodeId(host: string, pid: number): string {
  const clean = host.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "") || "node";
  const suffix = `-${pid}-${Math.random().toString(36).slice(2, 6)}`;
  return `${clean.slice(0, 64 - suffix.length)}${suffix}`;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

function parse(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch {
    return undefined;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);

/** Decoders return undefined for anything malformed: a bad record is ignored, not trusted. */
export function decodeMember(bytes: Uint8Array): MemberEntry | undefined {
  const v = parse(bytes);
  if (!isObject(v) || typeof v.id !== "string" || typeof v.heartbeatAt !== "number") {
    return undefined;
  }
  return {
    id: v.id,
    pid: isInt(v.pid) ? v.pid : 0,
    host: typeof v.host === "string" ? v.host : "",
    startedAt: typeof v.startedAt === "number" ? v.startedAt : 0,
    heartbeatAt: v.heartbeatAt,
    agentTypes: Array.isArray(v.agentTypes)
      ? v.agentTypes.filter((t): t is string => typeof t === "string")
      : [],
    activeAgents: isInt(v.activeAgents) ? v.activeAgents : 0,
    draining: v.draining === true,
  };
}

export function decodeLease(bytes: Uint8Array): LeaderLease | undefined {
  const v = parse(bytes);
  if (!isObject(v) || typeof v.id !== "string" || typeof v.expiresAt !== "number") {
    return undefined;
  }
  const lease: LeaderLease = { id: v.id, expiresAt: v.expiresAt };
  if (isInt(v.term)) lease.term = v.term;
  return lease;
}

export function decodeAssignment(bytes: Uint8Array): Assignment | undefined {
  const v = parse(bytes);
  if (!isObject(v) || !isInt(v.version) || !Array.isArray(v.shards)) return undefined;
  const shards: ShardAssignment[] = [];
  for (const s of v.shards) {
    if (!isObject(s) || !isInt(s.epoch) || !(s.owner === null || typeof s.owner === "string")) {
      return undefined;
    }
    const shard: ShardAssignment = { owner: s.owner, epoch: s.epoch };
    if (typeof s.releasing === "string") shard.releasing = s.releasing;
    shards.push(shard);
  }
  return { version: v.version, shards };
}

export function decodeRelease(bytes: Uint8Array): ReleaseConfirmation | undefined {
  const v = parse(bytes);
  if (!isObject(v) || typeof v.worker !== "string" || !isInt(v.epoch)) return undefined;
  return { worker: v.worker, epoch: v.epoch };
}

export function decodeShardCount(bytes: Uint8Array): number | undefined {
  const v = parse(bytes);
  if (!isObject(v) || !isInt(v.shardCount) || v.shardCount < 1) return undefined;
  return v.shardCount;
}

export function controlError(e: unknown): ControlError {
  if (e instanceof TroupeError) return { error: { code: e.code, message: e.message } };
  return {
    error: {
      code: ErrorCode.INVALID_STATE,
      message: e instanceof Error ? e.message : String(e),
    },
  };
}

/** The shards each worker owns, from an assignment. */
export function shardsByOwner(assignment: Assignment | undefined): Map<string, number[]> {
  const out = new Map<string, number[]>();
  assignment?.shards.forEach((s, i) => {
    if (s.owner === null) return;
    const list = out.get(s.owner);
    if (list === undefined) out.set(s.owner, [i]);
    else list.push(i);
  });
  return out;
}

/** Builds the status answer from what the leader (or a reader of the buckets) knows. */
export function buildClusterStatus(input: {
  namespace: string;
  shardCount: number;
  lease: LeaderLease | undefined;
  epoch: number;
  assignment: Assignment | undefined;
  members: Iterable<MemberEntry>;
  now: number;
}): ClusterStatus {
  const owned = shardsByOwner(input.assignment);
  const workers: WorkerSummary[] = [];
  const seen = new Set<string>();
  for (const m of input.members) {
    seen.add(m.id);
    workers.push({
      id: m.id,
      shards: owned.get(m.id) ?? [],
      activeAgents: m.activeAgents,
      heartbeatAgeMs: Math.max(0, input.now - m.heartbeatAt),
      draining: m.draining,
    });
  }
  // an owner without a members entry (gone, not yet reassigned) still shows its shards
  for (const [id, shards] of owned) {
    if (seen.has(id)) continue;
    workers.push({ id, shards, activeAgents: 0, heartbeatAgeMs: -1, draining: false });
  }
  workers.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const unassigned: number[] = [];
  if (input.assignment === undefined) {
    for (let i = 0; i < input.shardCount; i++) unassigned.push(i);
  } else {
    input.assignment.shards.forEach((s, i) => {
      if (s.owner === null) unassigned.push(i);
    });
  }
  const leaseLive = input.lease !== undefined && input.lease.expiresAt > input.now;
  return {
    namespace: input.namespace,
    shardCount: input.shardCount,
    leader: leaseLive ? input.lease!.id : null,
    epoch: input.epoch,
    assignmentVersion: input.assignment?.version ?? 0,
    workers,
    unassigned,
  };
}
/** `ctl.worker.<id>.replay` request, served by the worker that owns the agent's shard. */
export interface ReplayRequest {
  address: string;
  fromSequence?: number;
  dryRun?: boolean;
  /** Steps to send back (the last ones), default 1,000: a reply must fit one NATS message. */
  limit?: number;
}

/** `ctl.worker.<id>.replay` answer, or `{ error: { code, message } }`. */
export interface ReplayReply {
  address: string;
  worker: string;
  dryRun: boolean;
  stored: boolean;
  fromSequence: number;
  toSequence: number;
  /** Steps replayed in all; `steps` holds the last `limit` of them. */
  total: number;
  failed: number;
  steps: ReplayStep[];
  /** The machine's state value and context at the end. */
  final: { value: unknown; context: unknown };
  /** Set when the steps did not fit in one NATS message and were left out. */
  truncated?: boolean;
}
