/**
 * The embedded backend: an in-process inbox log, snapshot store, quarantine registry and
 * parking lot with the same contracts as the JetStream backend (ordered delivery, acks,
 * dedup window, compare-and-set snapshots). The default when no NATS is configured.
 */
import { ErrorCode, type Frame, TroupeError } from "@troupe/wire";
import type {
  AppendResult,
  Backend,
  BackendHandlers,
  Delivery,
  HeldMessage,
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
import { recordCodec } from "./records.js";

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

/** One inbox message; it is its own Delivery (no per-delivery allocation on the hot path). */
class Entry implements Delivery {
  readonly sequence: number;
  readonly to: string;
  readonly frame: Frame | undefined;
  readonly bytes: Uint8Array | undefined;
  delivered = false;
  redelivered = false;
  settled = false;
  readonly #inbox: Inbox;

  constructor(inbox: Inbox, sequence: number, out: Outgoing, to: string) {
    this.#inbox = inbox;
    this.sequence = sequence;
    this.to = to;
    if ("frame" in out) {
      this.frame = out.frame;
      this.bytes = undefined;
    } else {
      this.frame = undefined;
      this.bytes = out.bytes;
    }
  }

  acked = false;

  ack(): void {
    if (this.settled) return;
    this.settled = true;
    this.acked = true;
    this.#inbox.acked();
  }

  nak(delayMs = 0): void {
    if (this.settled) return;
    this.settled = true;
    this.redelivered = true;
    this.#inbox.requeue(this, delayMs);
  }
}

interface Inbox {
  acked(): void;
  requeue(entry: Entry, delayMs: number): void;
}

export function createEmbeddedBackend(options: EmbeddedBackendOptions = {}): EmbeddedBackend {
  const clock = options.clock ?? systemClock;
  const windowMs = options.duplicateWindowMs ?? 120_000;
  const maxParked = options.maxParked ?? 10_000;

  let sequence = 0;
  // The log: entries in sequence order from `head`; acknowledged ones are trimmed off the front.
  let entries: Entry[] = [];
  let head = 0;
  let unacked = 0;
  const queue: Entry[] = [];
  // Dedup: message id → sequence, and the ids in arrival order to expire them.
  const seen = new Map<string, number>();
  const seenIds: string[] = [];
  const seenAt: number[] = [];
  let seenHead = 0;
  let handlers: BackendHandlers | undefined;
  let clientId: string | undefined;
  let flushScheduled = false;
  const directInboxes = new Map<string, BackendHandlers>();

  const inbox: Inbox = {
    acked() {
      unacked--;
      while (head < entries.length && entries[head]!.acked) head++;
      if (head > 4096 && head * 2 > entries.length) {
        entries = entries.slice(head);
        head = 0;
      }
    },
    requeue(entry, delayMs) {
      const again = () => {
        if (entry.acked) return;
        queue.push(entry);
        scheduleFlush();
      };
      if (delayMs > 0) clock.setTimeout(again, delayMs);
      else again();
    },
  };

  function* unacknowledged(): Generator<Entry> {
    for (let i = head; i < entries.length; i++) {
      const e = entries[i]!;
      if (!e.acked) yield e;
    }
  }

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
    const batch = queue.splice(0, queue.length);
    for (const entry of batch) {
      if (entry.acked) continue;
      entry.delivered = true;
      entry.settled = false;
      h.deliver(entry);
    }
  }

  function expireSeen(now: number): void {
    while (seenHead < seenIds.length && now - seenAt[seenHead]! >= windowMs) {
      seen.delete(seenIds[seenHead]!);
      seenHead++;
    }
    if (seenHead > 4096 && seenHead * 2 > seenIds.length) {
      seenIds.splice(0, seenHead);
      seenAt.splice(0, seenHead);
      seenHead = 0;
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
        throw new TroupeError(
          ErrorCode.STORAGE_ERROR,
          `snapshot of ${address} is not serialisable`,
          {
            cause,
            details: { address },
          },
        );
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
  // Held messages of quarantined agents, per address in the order they were held: kept apart
  // from the refused frames (never trimmed) until release delivers and removes them.
  const heldByAddress = new Map<string, HeldMessage[]>();
  const removeHeld = (address: string, sequence: number): void => {
    const list = heldByAddress.get(address);
    if (list === undefined) return;
    // acknowledged in the order they were held: the first one, nearly always
    if (list[0]?.sequence === sequence) list.shift();
    else {
      const i = list.findIndex((m) => m.sequence === sequence);
      if (i >= 0) list.splice(i, 1);
    }
    if (list.length === 0) heldByAddress.delete(address);
  };
  const parked: ParkingLot = {
    async hold(message) {
      let list = heldByAddress.get(message.to);
      if (list === undefined) {
        list = [];
        heldByAddress.set(message.to, list);
      }
      // held in inbox order: only one not after the last can be a copy of one held already
      const last = list[list.length - 1];
      if (
        last !== undefined &&
        last.sequence >= message.sequence &&
        list.some((m) => m.sequence === message.sequence)
      ) {
        return;
      }
      const copy: HeldMessage = { to: message.to, sequence: message.sequence };
      if (message.frame !== undefined) copy.frame = message.frame;
      else if (message.bytes !== undefined) copy.bytes = message.bytes;
      list.push(copy);
    },
    async held(address, { after, limit }) {
      const list = heldByAddress.get(address) ?? [];
      const out: Delivery[] = [];
      for (const m of list) {
        if (out.length >= limit) break;
        if (m.sequence <= after) continue;
        const d: Delivery = {
          to: m.to,
          sequence: m.sequence,
          redelivered: true,
          ...(m.frame === undefined ? {} : { frame: m.frame }),
          ...(m.bytes === undefined ? {} : { bytes: m.bytes }),
          ack: () => removeHeld(address, m.sequence),
          nak: () => {},
        };
        out.push(d);
      }
      return out;
    },
    async heldCount(address) {
      return heldByAddress.get(address)?.length ?? 0;
    },
    async heldCounts() {
      return new Map([...heldByAddress].map(([a, list]) => [a, list.length]));
    },
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
      return unacked;
    },
    pendingDeliveries() {
      return handlers === undefined ? 0 : queue.length;
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
      for (const entry of unacknowledged()) queue.push(entry);
      scheduleFlush();
    },
    append(out): Promise<AppendResult> {
      const envelope = "frame" in out ? out.frame.envelope : out.envelope;
      if (out.fresh !== true) {
        const now = clock.now();
        if (seenHead < seenIds.length && now - seenAt[seenHead]! >= windowMs) expireSeen(now);
        const prior = seen.get(envelope.messageId);
        if (prior !== undefined) return Promise.resolve({ sequence: prior, duplicate: true });
        seen.set(envelope.messageId, sequence + 1);
        seenIds.push(envelope.messageId);
        seenAt.push(now);
      }
      sequence++;
      const entry = new Entry(inbox, sequence, out, envelope.to);
      entries.push(entry);
      unacked++;
      queue.push(entry);
      scheduleFlush();
      return Promise.resolve({ sequence, duplicate: false });
    },
    async sendDirect(out) {
      const h = directInboxes.get("frame" in out ? out.frame.envelope.to : out.envelope.to);
      // like a core NATS publish with no subscriber: nobody is listening for it any more
      if (h !== undefined) h.direct("frame" in out ? out.frame : out.bytes);
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
      for (const entry of unacknowledged()) {
        if (entry.delivered) entry.redelivered = true;
        entry.delivered = false;
      }
    },
  };
}
