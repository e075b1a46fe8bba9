/**
 * The backend interface: what the runtime needs from a transport and a store. The embedded
 * (in-process) backend implements it here; the JetStream backend implements it in @troupe/nats.
 */
import type { Envelope, Frame } from "@troupe/wire";

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
  /** "auto" after handler failures, "manual" when an operator did it. */
  by: "auto" | "manual";
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

export interface ParkingLot {
  park(entry: ParkedFrame): Promise<void>;
  list(limit?: number): Promise<ParkedFrame[]>;
  count(): Promise<number>;
}

export interface BackendHandlers {
  /** Durable inbox deliveries, in inbox order. */
  deliver(delivery: Delivery): void;
  /** Direct (non-durable) frames for this process's client inbox `~<clientId>`. */
  direct(frame: Frame): void;
}

export interface Backend {
  readonly kind: string;
  /** Start delivering to `handlers`. `clientId` names this process's direct inbox. */
  open(clientId: string, handlers: BackendHandlers): Promise<void>;
  /** Durably append to the inbox. Deduplicates by message id within the dedup window. */
  append(out: Outgoing): Promise<AppendResult>;
  /** Non-durable delivery to a client inbox address (`~<clientId>`), e.g. a reply. */
  sendDirect(frame: Frame): Promise<void>;
  readonly snapshots: SnapshotStore;
  readonly quarantine: QuarantineRegistry;
  readonly parked: ParkingLot;
  /**
   * Messages appended here but not yet handed to `deliver` (0 when unknown). Lets
   * `runtime.settled()` see a message between one agent's publish and the next one's turn.
   */
  pendingDeliveries?(): number;
  /** Stop delivering; unacknowledged messages stay for the next consumer. */
  close(): Promise<void>;
}
