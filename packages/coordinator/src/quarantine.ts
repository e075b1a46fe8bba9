/**
 * The quarantine control API (docs/cluster.md, "Quarantine"): `ctl.quarantine`,
 * `ctl.release` and `ctl.quarantined`, served by the leader. Quarantine and release act on
 * the live activation, so the leader forwards them to the worker that owns the agent's
 * shard (`ctl.worker.<id>.quarantine|release`); the list is read from the quarantine bucket
 * and the parked stream.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { shardOfAddress, subjectToken } from "@troupe/nats";
import { namespaceNames, tryAddressFromToken } from "@troupe/nats/internal";
import type { Logger, QuarantineEntry, Runtime } from "@troupe/runtime";
import { ErrorCode, isTroupeError, parseAgentAddress, TroupeError } from "@troupe/wire";
import {
  type Assignment,
  CONTROL_QUEUE,
  controlError,
  controlSubject,
  encodeJson,
  type MemberEntry,
  workerControlSubject,
} from "./protocol.js";

/** `ctl.quarantine` request. */
export interface QuarantineRequest {
  address: string;
  reason: string;
  /** Default "manual"; "auto" when a runtime quarantines a sender of repeated bad frames. */
  by?: "auto" | "manual";
  /** Quarantined as a sender: its frames are refused everywhere (QuarantineEntry). */
  refuseFrames?: boolean;
}

/**
 * `ctl.release` request. `address` may also be a client inbox (`~id`) or an endpoint
 * (`#hex`) quarantined as a sender: nothing is held for those, the leader deletes the entry.
 */
export interface ReleaseRequest {
  address: string;
}

/** `ctl.quarantine` answer (also the worker's). */
export interface QuarantineReply {
  address: string;
  worker: string;
  entry: QuarantineEntry;
}

/** `ctl.release` answer (also the worker's): `held` messages are delivered before new ones. */
export interface ReleaseReply {
  address: string;
  worker: string;
  held: number;
}

export interface QuarantinedAgent extends QuarantineEntry {
  /** Messages held for it in the parked stream. */
  held: number;
}

/** `ctl.quarantined` answer. */
export interface QuarantinedReply {
  agents: QuarantinedAgent[];
}

/** How long the leader waits for the owning worker's answer (ms). */
const FORWARD_TIMEOUT_MS = 10_000;

const decoder = new TextDecoder();

function parseRequest(data: Uint8Array, verb: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(decoder.decode(data));
  } catch {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, `a ${verb} request is a JSON object`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, `a ${verb} request is a JSON object`);
  }
  return v as Record<string, unknown>;
}

/** The `address` field, checked: a `type/key` agent address. */
export function requestAddress(req: Record<string, unknown>, verb: string): string {
  const address = req.address;
  if (typeof address !== "string") {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, `a ${verb} request needs "address"`);
  }
  parseAgentAddress(address);
  return address;
}

/** The optional `by` and `refuseFrames` fields of a quarantine request, checked. */
export function requestQuarantineKind(req: Record<string, unknown>): {
  by: "auto" | "manual";
  refuseFrames: boolean;
} {
  const by = req.by ?? "manual";
  if (by !== "auto" && by !== "manual") {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, '"by" is "auto" or "manual"');
  }
  const refuseFrames = req.refuseFrames ?? false;
  if (typeof refuseFrames !== "boolean") {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, '"refuseFrames" is a boolean');
  }
  return { by, refuseFrames };
}

/** A sender address that is not an agent: a client inbox `~id` or an endpoint `#hex`. */
function isNonAgentSender(address: unknown): address is string {
  return typeof address === "string" && /^[~#][^\s]{1,1023}$/.test(address);
}

/** The `reason` field of a quarantine request: a non-empty string. */
export function requestReason(req: Record<string, unknown>): string {
  const reason = req.reason;
  if (typeof reason !== "string" || reason.trim() === "") {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, 'a quarantine request needs a "reason"');
  }
  return reason;
}

export interface QuarantineControlOptions {
  nc: NatsConnection;
  namespace: string;
  shardCount: number;
  log: Logger;
  /** The current assignment, as the leader knows it. */
  assignment(): Assignment | undefined;
  /** The live members, as the leader knows them. */
  members(): MemberEntry[];
}

/** Subscribes the leader to the quarantine verbs; unsubscribe them when it stops leading. */
export function serveQuarantineControl(o: QuarantineControlOptions): Subscription[] {
  const serve = (verb: string, handle: (data: Uint8Array) => Promise<unknown>): Subscription =>
    o.nc.subscribe(controlSubject(o.namespace, verb), {
      queue: CONTROL_QUEUE,
      callback: (err, msg) => {
        if (err !== null) return;
        handle(msg.data).then(
          (reply) => msg.respond(encodeJson(reply)),
          (e: unknown) => {
            if (!(e instanceof TroupeError))
              o.log.error({ err: e, verb }, "control request failed");
            msg.respond(encodeJson(controlError(e)));
          },
        );
      },
    });
  return [
    serve("quarantine", async (data) => {
      const req = parseRequest(data, "quarantine");
      const address = requestAddress(req, "quarantine");
      const reason = requestReason(req);
      const kind = requestQuarantineKind(req);
      return forward(o, address, "quarantine", { address, reason, ...kind });
    }),
    serve("release", async (data) => {
      const req = parseRequest(data, "release");
      if (isNonAgentSender(req.address)) return releaseSender(o, req.address);
      const address = requestAddress(req, "release");
      return forward(o, address, "release", { address });
    }),
    serve("quarantined", async () => listQuarantined(o.nc, o.namespace)),
  ];
}

/**
 * Releases a client or endpoint quarantined as a sender: no activation holds anything for
 * it, so the leader deletes its entry; every runtime takes its frames again once it sees the
 * deletion (the bucket watch; at the latest its next registry listing).
 */
async function releaseSender(o: QuarantineControlOptions, address: string): Promise<ReleaseReply> {
  const names = namespaceNames(o.namespace);
  let existed: boolean;
  try {
    const kv = await new Kvm(o.nc).open(names.quarantineBucket);
    const e = await kv.get(subjectToken(address));
    existed = e !== null && e.operation === "PUT";
    if (existed) await kv.delete(subjectToken(address));
  } catch (e) {
    throw new TroupeError(
      ErrorCode.TRANSPORT_ERROR,
      `cannot release ${address}: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e, retryAfterMs: 1000 },
    );
  }
  if (!existed) {
    throw new TroupeError(ErrorCode.INVALID_STATE, `${address} is not quarantined`, {
      details: { address },
    });
  }
  o.log.info({ sender: address }, "sender released by an operator");
  return { address, worker: "coordinator", held: 0 };
}

/** Hands the request to the worker that owns the agent's shard and relays its answer. */
async function forward(
  o: QuarantineControlOptions,
  address: string,
  verb: string,
  body: object,
): Promise<unknown> {
  const { type } = parseAgentAddress(address);
  const members = o.members();
  if (!members.some((m) => m.agentTypes.includes(type))) {
    throw new TroupeError(
      ErrorCode.UNKNOWN_AGENT,
      `no worker in namespace ${o.namespace} hosts agent type "${type}"`,
      { details: { address } },
    );
  }
  const shard = shardOfAddress(address, o.shardCount);
  const owner = o.assignment()?.shards[shard]?.owner ?? null;
  if (owner === null) {
    throw new TroupeError(
      ErrorCode.INVALID_STATE,
      `shard ${shard} of ${address} has no owner right now (it is being moved); try again`,
      { retryAfterMs: 1000, details: { address, shard } },
    );
  }
  let reply: Uint8Array;
  try {
    const m = await o.nc.request(workerControlSubject(o.namespace, owner, verb), encodeJson(body), {
      timeout: FORWARD_TIMEOUT_MS,
    });
    reply = m.data;
  } catch (e) {
    throw new TroupeError(
      ErrorCode.TIMEOUT,
      `worker ${owner}, owner of shard ${shard} of ${address}, did not answer the ${verb} request: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e, retryAfterMs: 1000, details: { address, shard, worker: owner } },
    );
  }
  // relayed as it is: the worker's answer or its { error }
  return JSON.parse(decoder.decode(reply)) as unknown;
}

/**
 * The runtime's `quarantineElsewhere` for a worker: asks the leader (`ctl.quarantine`) to
 * have the owner of an agent's shard quarantine it as a sender, so its live activation stops
 * at once. Rejects with the typed error the leader or owner answered (the runtime then
 * writes the entry to the registry itself).
 */
export function quarantineThroughLeader(
  nc: NatsConnection,
  namespace: string,
): (entry: QuarantineEntry) => Promise<void> {
  return async (entry) => {
    const body: QuarantineRequest = {
      address: entry.address,
      reason: entry.reason,
      by: entry.by,
      refuseFrames: entry.refuseFrames === true,
    };
    let data: Uint8Array;
    try {
      const m = await nc.request(controlSubject(namespace, "quarantine"), encodeJson(body), {
        // the leader waits up to FORWARD_TIMEOUT_MS for the owner
        timeout: FORWARD_TIMEOUT_MS + 1000,
      });
      data = m.data;
    } catch (e) {
      throw new TroupeError(
        ErrorCode.TIMEOUT,
        `no coordinator answered the quarantine of ${entry.address}: ${e instanceof Error ? e.message : String(e)}`,
        { cause: e, retryAfterMs: 1000 },
      );
    }
    const reply = JSON.parse(decoder.decode(data)) as { error?: { code: string; message: string } };
    if (reply.error !== undefined) {
      const code = Object.hasOwn(ErrorCode, reply.error.code)
        ? (reply.error.code as ErrorCode)
        : ErrorCode.INVALID_STATE;
      throw new TroupeError(code, reply.error.message);
    }
  };
}

/** The quarantine registry with the number of held messages of each agent. */
export async function listQuarantined(
  nc: NatsConnection,
  namespace: string,
): Promise<QuarantinedReply> {
  const names = namespaceNames(namespace);
  try {
    const kv = await new Kvm(nc).open(names.quarantineBucket);
    const jsm = await jetstreamManager(nc);
    const keys: string[] = [];
    for await (const k of await kv.keys()) keys.push(k);
    const [entries, info] = await Promise.all([
      Promise.all(keys.map((k) => kv.get(k))),
      jsm.streams.info(names.heldStream, { subjects_filter: names.heldSubjects }),
    ]);
    const held = new Map<string, number>();
    for (const [subject, n] of Object.entries(info.state.subjects ?? {})) {
      const parts = subject.split(".");
      const address = tryAddressFromToken(parts[parts.length - 1] ?? "");
      if (address !== undefined) held.set(address, n);
    }
    const agents: QuarantinedAgent[] = [];
    for (const e of entries) {
      if (e === null || e.operation !== "PUT") continue;
      let entry: QuarantineEntry;
      try {
        entry = e.json<QuarantineEntry>();
      } catch {
        continue; // not ours to show: an unreadable entry
      }
      agents.push({ ...entry, held: held.get(entry.address) ?? 0 });
    }
    agents.sort((a, b) => a.since - b.since);
    return { agents };
  } catch (e) {
    throw new TroupeError(
      ErrorCode.TRANSPORT_ERROR,
      `cannot read the quarantine of namespace ${namespace}: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e, retryAfterMs: 1000 },
    );
  }
}

/** What `resumeReleases` and `quarantineAs` are on RuntimeCore (`@troupe/runtime` internals). */
interface Resuming {
  resumeReleases?(match: (address: string) => boolean): Promise<number>;
  quarantineAs?(
    address: string,
    reason: string,
    options: { by: "auto" | "manual"; refuseFrames?: boolean },
  ): Promise<QuarantineEntry>;
}

export interface QuarantineControl {
  stop(): void;
}

/** What a worker's control server (`ctl.worker.<id>.*`) works with. */
export interface WorkerControlOptions {
  nc: NatsConnection;
  namespace: string;
  workerId: string;
  runtime: Runtime;
  shardCount: number;
  ownedShards: () => number[];
  logger: Logger;
}

/**
 * The worker's side: `ctl.worker.<id>.quarantine|release` for the agents of the shards it
 * owns (the leader forwards to it), and finishing releases a previous owner began.
 */
export function serveWorkerQuarantine(options: WorkerControlOptions): QuarantineControl {
  const { nc, runtime, logger, shardCount } = options;
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const json = (v: unknown) => encoder.encode(JSON.stringify(v));
  const parse = (data: Uint8Array, verb: string): Record<string, unknown> => {
    try {
      const v = JSON.parse(decoder.decode(data)) as unknown;
      if (typeof v === "object" && v !== null && !Array.isArray(v)) {
        return v as Record<string, unknown>;
      }
    } catch {
      // answered below
    }
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, `a ${verb} request is a JSON object`);
  };
  const checkOwned = (address: string): void => {
    const shard = shardOfAddress(address, shardCount);
    if (!options.ownedShards().includes(shard)) {
      throw new TroupeError(
        ErrorCode.INVALID_STATE,
        `worker ${options.workerId} does not own shard ${shard} of ${address} (it moved); try again`,
        { retryAfterMs: 1000, details: { address, shard } },
      );
    }
  };
  const serve = (verb: string, handle: (data: Uint8Array) => Promise<unknown>): Subscription =>
    nc.subscribe(workerControlSubject(options.namespace, options.workerId, verb), {
      callback: (err, msg) => {
        if (err !== null) return;
        handle(msg.data).then(
          (reply) => msg.respond(json(reply)),
          (e: unknown) => {
            const code = isTroupeError(e) ? e.code : ErrorCode.INVALID_STATE;
            const message = e instanceof Error ? e.message : String(e);
            if (!isTroupeError(e)) logger.error({ err: e, verb }, `${verb} failed`);
            msg.respond(json({ error: { code, message } }));
          },
        );
      },
    });
  const subs = [
    serve("quarantine", async (data) => {
      const req = parse(data, "quarantine");
      const address = requestAddress(req, "quarantine");
      const reason = requestReason(req);
      const kind = requestQuarantineKind(req);
      checkOwned(address);
      const internals = runtime as Runtime & Resuming;
      if (internals.quarantineAs !== undefined) {
        await internals.quarantineAs(address, reason, kind);
      } else {
        await runtime.quarantine(address, reason);
      }
      const entry = await runtime.backend.quarantine.get(address);
      if (entry === undefined) {
        throw new TroupeError(ErrorCode.INVALID_STATE, `${address} was released meanwhile`);
      }
      if (kind.by === "auto") logger.warn({ agent: address, reason }, "quarantined as a sender");
      else logger.info({ agent: address, reason }, "quarantined by an operator");
      const reply: QuarantineReply = { address, worker: options.workerId, entry };
      return reply;
    }),
    serve("release", async (data) => {
      const address = requestAddress(parse(data, "release"), "release");
      checkOwned(address);
      const held = await runtime.release(address);
      logger.info({ agent: address, held }, "released by an operator");
      const reply: ReleaseReply = { address, worker: options.workerId, held };
      return reply;
    }),
  ];

  // A release that was under way when the agent's previous host stopped (a crash, a shard
  // move) is finished by the shard's new owner, even if no message comes to activate it.
  const resuming = runtime as Runtime & Resuming;
  let known = new Set<number>();
  let checking = false;
  const check = (): void => {
    if (checking || resuming.resumeReleases === undefined) return;
    const owned = new Set(options.ownedShards());
    const fresh = [...owned].filter((s) => !known.has(s));
    if (fresh.length === 0) {
      known = owned;
      return;
    }
    checking = true;
    const set = new Set(fresh);
    resuming
      .resumeReleases((a) => set.has(shardOfAddress(a, shardCount)))
      .then(
        (n) => {
          known = owned;
          if (n > 0) logger.info({ agents: n }, "finishing releases a previous owner began");
        },
        (err: unknown) => logger.warn({ err }, "could not look for unfinished releases; retrying"),
      )
      .finally(() => {
        checking = false;
      });
  };
  const timer = setInterval(check, 1000);
  timer.unref?.();
  check();
  return {
    stop() {
      clearInterval(timer);
      for (const s of subs) s.unsubscribe();
    },
  };
}
