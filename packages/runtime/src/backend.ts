/**
 * The backend interface: what the runtime needs from a transport and a store. The embedded
 * (in-process) backend implements it here; the JetStream backend implements it in @troupe/nats.
 */
import type { Envelope, Frame, TraceContext } from "@troupe/wire";
import type { ReplayMessage } from "./replay.js";

/** A message taken from the durable inbox, to be acknowledged once its effects are stored. */
export interface Delivery {
  /** Recipient address (`type/key` or a bound callable's address), for routing. */
  readonly to: string;
  /** The inbox (stream) sequence: a durable, totally ordered position. */
  readonly sequence: number;
  /** True when this message was delivered before and not acknowledged. */
  readonly redelivered: boolean;
  /** The frame, when the backend already has it decoded (in-process delivery). */
  readonly frame?: Frame;
  /** The encoded frame, when it travelled as bytes (sealed frames always do). */
  readonly bytes?: Uint8Array;
  /** The shard it came from, when the backend has shards (for tracing). */
  readonly shard?: number;
  /**
   * The W3C trace context the transport carried beside the frame (NATS headers), when it did:
   * the sender's context if the envelope has no `trace` of its own.
   */
  readonly trace?: TraceContext | undefined;
  /** Done with it: never deliver again. */
  ack(): void;
  /** Deliver again after `delayMs` (default: at once). */
  nak(delayMs?: number): void;
}

export interface AppendResult {
  /** The inbox sequence the message was stored at. */
  sequence: number;
  /** True when a message with the same id was already stored (dedup window): not stored twice. */
  duplicate: boolean;
}

/**
 * What travels into `append`: a frame object, or bytes with their routing envelope.
 * `fresh` says the message id was just minted at random, so no earlier copy can exist: a
 * backend may skip its dedup bookkeeping (a transport that can retry a publish must not).
 */
export type Outgoing = ({ frame: Frame } | { bytes: Uint8Array; envelope: Envelope }) & {
  fresh?: boolean;
};

/** The agent's durable record: its XState snapshot plus what exactly-once needs. */
export interface SnapshotRecord {
  /** The persisted XState snapshot (`getPersistedSnapshot()`), msgpack-encodable. */
  state: unknown;
  /** The last inbox sequence whose effects this record includes. */
  lastSequence: number;
  /** Messages produced but not yet known to be published (transactional outbox). */
  outbox: Frame[];
  /** Frames this agent has sent so far (its next envelope sequence is sent + 1). */
  sent: number;
  /** Wall-clock ms when written. */
  updatedAt: number;
}

export interface StoredSnapshot {
  record: SnapshotRecord;
  /** Revision for compare-and-set; starts at 1. */
  revision: number;
}

export interface SnapshotStore {
  get(address: string): Promise<StoredSnapshot | undefined>;
  /**
   * Compare-and-set: stores only if the current revision equals `expectedRevision`
   * (0 = must not exist). Returns the new revision; a conflict throws STORAGE_ERROR with
   * `details.conflict = true` (a stale activation must stop).
   */
  put(address: string, record: SnapshotRecord, expectedRevision: number): Promise<number>;
  delete(address: string): Promise<void>;
}

export interface QuarantineEntry {
  address: string;
  reason: string;
  since: number;
  /**
   * "auto" after handler failures or repeated undecodable / unopenable / replayed frames from
   * this sender, "manual" when an operator did it.
   */
  by: "auto" | "manual";
  /**
   * Quarantined as a sender: every runtime refuses frames from this address (QUARANTINED,
   * parked) until release. Set for senders of repeated bad frames; an agent quarantined only
   * for its own handler failures sends nothing meanwhile, so its frames are not refused.
   */
  refuseFrames?: boolean;
  /**
   * Set (ms) when a release started: the held messages are being delivered. The entry is
   * deleted only once none is left, so an activation that finds this flag (after a crash,
   * on a new owner) finishes the release before it takes new messages.
   */
  releasing?: number;
}

/** Quarantined agents survive runtime restarts: the registry lives in the backend. */
export interface QuarantineRegistry {
  get(address: string): Promise<QuarantineEntry | undefined>;
  set(entry: QuarantineEntry): Promise<void>;
  delete(address: string): Promise<void>;
  list(): Promise<QuarantineEntry[]>;
}

/** A frame that could not be decoded, opened, authorised or validated: kept with its reason. */
export interface ParkedFrame {
  sequence: number;
  to: string;
  reason: string;
  code: string;
  at: number;
  bytes?: Uint8Array;
  frame?: Frame;
}

/** A quarantined agent's inbox message, to be held (parked in order) until release. */
export interface HeldMessage {
  to: string;
  /** Its inbox sequence: release hands it back under it, so `lastSequence` dedup applies. */
  sequence: number;
  frame?: Frame;
  bytes?: Uint8Array;
}

export interface ParkingLot {
  /** Parks a refused frame (decode, crypto, validation, …) with its reason, for audit. */
  park(entry: ParkedFrame): Promise<void>;
  /** Refused frames, newest last (held messages are not listed). */
  list(limit?: number): Promise<ParkedFrame[]>;
  /** Refused frames stored. */
  count(): Promise<number>;
  /**
   * Holds a quarantined agent's message: stores it durably after the ones held before, and
   * resolves once it is stored (only then may the inbox copy be acknowledged). Idempotent
   * per inbox sequence: holding the same message again stores it once.
   */
  hold(message: HeldMessage): Promise<void>;
  /**
   * Holds several consecutive messages of one agent at once (optional: for a transport where
   * one message at a time costs a round trip each). Stores a prefix of them, in order, and
   * never a message without all the earlier ones: `stored` says how many, from the first,
   * are stored (their inbox copies may be acknowledged); `error` why the rest are not.
   */
  holdMany?(messages: readonly HeldMessage[]): Promise<{ stored: number; error?: unknown }>;
  /**
   * The oldest held messages of `address` with an inbox sequence above `after`, in the order
   * they were held, as deliveries: `ack` = delivered and stored, remove it from the lot;
   * `nak` = keep it.
   */
  held(address: string, options: { after: number; limit: number }): Promise<Delivery[]>;
  /**
   * Removes whatever is still held for `address` once a release has delivered (and stored)
   * everything: copies a retried hold left behind (optional).
   */
  clearHeld?(address: string): Promise<void>;
  /** How many messages are held for `address`. */
  heldCount(address: string): Promise<number>;
  /** Held messages per agent address (agents with none are left out). */
  heldCounts(): Promise<Map<string, number>>;
}

export interface BackendHandlers {
  /** Durable inbox deliveries, in inbox order. */
  deliver(delivery: Delivery): void;
  /**
   * Direct (non-durable) frames for this process's client inbox `~<clientId>`: the frame, or
   * the encoded bytes of a sealed one (the runtime opens them; it checks plain ones too).
   */
  direct(message: Frame | Uint8Array): void;
}

export interface Backend {
  readonly kind: string;
  /** Start delivering to `handlers`. `clientId` names this process's direct inbox. */
  open(clientId: string, handlers: BackendHandlers): Promise<void>;
  /** Durably append to the inbox. Deduplicates by message id within the dedup window. */
  append(out: Outgoing): Promise<AppendResult>;
  /**
   * Non-durable delivery to a client inbox address (`~<clientId>`), e.g. a reply: a frame, or
   * sealed bytes with their envelope (`fresh` means nothing here).
   */
  sendDirect(out: Outgoing): Promise<void>;
  readonly snapshots: SnapshotStore;
  readonly quarantine: QuarantineRegistry;
  readonly parked: ParkingLot;
  /**
   * Messages appended here but not yet handed to `deliver` (0 when unknown). Lets
   * `runtime.settled()` see a message between one agent's publish and the next one's turn.
   */
  pendingDeliveries?(): number;
  /**
   * An agent's inbox messages in inbox order, for replay; absent when the backend keeps no
   * history (the embedded one forgets acknowledged messages).
   */
  history?(
    address: string,
    options: {
      fromSequence?: number;
      toSequence?: number;
      /**
       * Turns a stored message into a frame (default: decode it as a plain frame). A runtime
       * that seals agent traffic opens sealed ones with its keys and refuses plain ones, as
       * its open stage did when they arrived; a message it throws for is skipped.
       */
      decode?: (bytes: Uint8Array) => Frame;
    },
  ): AsyncIterable<ReplayMessage>;
  /** The shard `address` belongs to, for backends that have shards (for tracing). */
  shardOf?(address: string): number | undefined;
  /**
   * Whether this process hosts `address` now (a worker: its shard is pulled here). Absent =
   * everything (embedded). Release activates an agent only where it is hosted.
   */
  hosts?(address: string): boolean;
  /**
   * Calls `listener` for each change of the quarantine registry made after the call (by any
   * process): the entry, or undefined when deleted. Returns a function that stops watching.
   * Absent = no watch: the runtime lists the registry periodically instead.
   */
  watchQuarantine?(
    listener: (address: string, entry: QuarantineEntry | undefined) => void,
  ): () => void;
  /** Stop delivering; unacknowledged messages stay for the next consumer. */
  close(): Promise<void>;
}
