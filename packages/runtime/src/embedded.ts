/**
 * The embedded backend: an in-process inbox log, snapshot store, quarantine registry and
 * parking lot with the same contracts as the JetStream backend (ordered delivery, acks,
 * dedup window, compare-and-set snapshots). The default when no NATS is configured.
 */
import { ErrorCode, type Frame, TroupeError } from "@troupe/wire";
import { Packr } from "msgpackr";
import type {
  AppendResult,
  Backend,
  BackendHandlers,
  Delivery,
  Outgoing,
  ParkedFrame,
  ParkingLot,
  QuarantineEntry,
  QuarantineRegistry,
  SnapshotRecord,
  SnapshotStore,
  StoredSnapshot,
} from "./backend.js";
import { type Clock, systemClock } from "./clock.js";

export interface EmbeddedBackendOptions {
  /** Message ids remembered for dedup, ms. Default 2 minutes (JetStream's default). */
  duplicateWindowMs?: number;
  /** Parked frames kept for audit (oldest dropped first, and counted). Default 10,000. */
  maxParked?: number;
  clock?: Clock;
}

export interface EmbeddedBackend extends Backend {
  readonly kind: "embedded";
  /** Messages appended but not yet acknowledged. */
  readonly unacknowledged: number;
}

// Records are stored encoded: proves they are serialisable (as they must be for NATS KV)
// and keeps callers from sharing mutable objects with the store.
const recordCodec = new Packr({ useRecords: false, moreTypes: true, structuredClone: false });

interface Entry {
  sequence: number;
  out: Outgoing;
  to: string;
  delivered: boolean;
  redelivered: boolean;
}

export function createEmbeddedBackend(options: EmbeddedBackendOptions = {}): EmbeddedBackend {
  const clock = options.clock ?? systemClock;
  const windowMs = options.duplicateWindowMs ?? 120_000;
  const maxParked = options.maxParked ?? 10_000;

  let sequence = 0;
  const log = new Map<number, Entry>();
  const queue: Entry[] = [];
  const seen = new Map<string, { sequence: number; at: number }>();
  let handlers: BackendHandlers | undefined;
  let clientId: string | undefined;
  let flushScheduled = false;
  const directInboxes = new Map<string, BackendHandlers>();

  function scheduleFlush(): void {
    if (flushScheduled || handlers === undefined) return;
    flushScheduled = true;
    setImmediate(flush);
  }

  function flush(): void {
    flushScheduled = false;
    const h = handlers;
    if (h === undefined) return;
    // deliveries made during this flush (e.g. by a handler that appends) wait for the next
    const n = queue.length;
    const batch = queue.splice(0, n);
    for (const entry of batch) {
      if (!log.has(entry.sequence)) continue; // acknowledged meanwhile
      entry.delivered = true;
      h.deliver(makeDelivery(entry));
    }
  }

  function makeDelivery(entry: Entry): Delivery {
    let settled = false;
    const base = {
      to: entry.to,
      sequence: entry.sequence,
      redelivered: entry.redelivered,
      ack() {
        if (settled) return;
        settled = true;
        log.delete(entry.sequence);
      },
      nak(delayMs = 0) {
        if (settled) return;
        settled = true;
        entry.redelivered = true;
        const requeue = () => {
          if (!log.has(entry.sequence)) return;
          queue.push(entry);
          scheduleFlush();
        };
        if (delayMs > 0) clock.setTimeout(requeue, delayMs);
        else requeue();
      },
    };
    return "frame" in entry.out
      ? { ...base, frame: entry.out.frame }
      : { ...base, bytes: entry.out.bytes };
  }

  function pruneSeen(now: number): void {
    for (const [id, v] of seen) {
      if (now - v.at < windowMs) break;
      seen.delete(id);
    }
  }

  const snapshotData = new Map<string, { bytes: Uint8Array; revision: number }>();
  const snapshots: SnapshotStore = {
    async get(address) {
      const v = snapshotData.get(address);
      if (v === undefined) return undefined;
      const stored: StoredSnapshot = {
        record: recordCodec.unpack(v.bytes) as SnapshotRecord,
        revision: v.revision,
      };
      return stored;
    },
    async put(address, record, expectedRevision) {
      const current = snapshotData.get(address)?.revision ?? 0;
      if (current !== expectedRevision) {
        throw new TroupeError(
          ErrorCode.STORAGE_ERROR,
          `snapshot of ${address} changed underneath (expected revision ${expectedRevision}, found ${current})`,
          { details: { conflict: true, address, expectedRevision, current } },
        );
      }
      let bytes: Uint8Array;
      try {
        bytes = recordCodec.pack(record);
      } catch (cause) {
        throw new TroupeError(ErrorCode.STORAGE_ERROR, `snapshot of ${address} is not serialisable`, {
          cause,
          details: { address },
        });
      }
      const revision = current + 1;
      snapshotData.set(address, { bytes, revision });
      return revision;
    },
    async delete(address) {
      snapshotData.delete(address);
    },
  };

  const quarantined = new Map<string, QuarantineEntry>();
  const quarantine: QuarantineRegistry = {
    async get(address) {
      const e = quarantined.get(address);
      return e === undefined ? undefined : { ...e };
    },
    async set(entry) {
      quarantined.set(entry.address, { ...entry });
    },
    async delete(address) {
      quarantined.delete(address);
    },
    async list() {
      return [...quarantined.values()].map((e) => ({ ...e }));
    },
  };

  const parkedFrames: ParkedFrame[] = [];
  let parkedTotal = 0;
  const parked: ParkingLot = {
    async park(entry) {
      parkedTotal++;
      parkedFrames.push(entry);
      if (parkedFrames.length > maxParked) parkedFrames.shift();
    },
    async list(limit = 100) {
      return parkedFrames.slice(-limit);
    },
    async count() {
      return parkedTotal;
    },
  };

  return {
    kind: "embedded",
    get unacknowledged() {
      return log.size;
    },
    async open(id, h) {
      if (handlers !== undefined) {
        throw new TroupeError(
          ErrorCode.INVALID_STATE,
          "this embedded backend is already open: one runtime consumes it at a time",
        );
      }
      handlers = h;
      clientId = id;
      directInboxes.set(`~${id}`, h);
      // whatever the previous consumer left unacknowledged is delivered again, in order
      queue.length = 0;
      for (const entry of log.values()) queue.push(entry);
      scheduleFlush();
    },
    async append(out): Promise<AppendResult> {
      const envelope = "frame" in out ? out.frame.envelope : out.envelope;
      const now = clock.now();
      pruneSeen(now);
      const prior = seen.get(envelope.messageId);
      if (prior !== undefined) return { sequence: prior.sequence, duplicate: true };
      sequence++;
      seen.set(envelope.messageId, { sequence, at: now });
      const entry: Entry = { sequence, out, to: envelope.to, delivered: false, redelivered: false };
      log.set(sequence, entry);
      queue.push(entry);
      scheduleFlush();
      return { sequence, duplicate: false };
    },
    async sendDirect(frame: Frame) {
      const h = directInboxes.get(frame.envelope.to);
      // like a core NATS publish with no subscriber: nobody is listening for it any more
      if (h !== undefined) h.direct(frame);
    },
    snapshots,
    quarantine,
    parked,
    async close() {
      if (clientId !== undefined) directInboxes.delete(`~${clientId}`);
      handlers = undefined;
      clientId = undefined;
      queue.length = 0;
      // entries stay in the log: the next runtime that opens this backend gets them again
      for (const entry of log.values()) {
        if (entry.delivered) entry.redelivered = true;
        entry.delivered = false;
      }
    },
  };
}
