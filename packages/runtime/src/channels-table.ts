/** Established channels: a key shared by two endpoints, with per-direction sequence numbers. */
import { createSequenceWindow, ErrorCode, type SequenceWindow, TroupeError } from "@troupe/wire";

/** How many accepted (channel sequence → inbox sequence) pairs are remembered. */
const CLAIMS_KEPT = 4096;

export class Channel {
  readonly id: string;
  /** The endpoint that established it. */
  readonly a: string;
  readonly b: string;
  readonly key: Uint8Array;
  readonly establishedAt: number;
  readonly #sent = new Map<string, number>();
  readonly #received = new Map<string, SequenceWindow>();
  /** Which inbox message each accepted channel sequence came in (re-processing is no replay). */
  readonly #claims = new Map<string, number>();
  /** Sequence gaps seen by receivers (messages that never arrived, or not yet). */
  gaps = 0;

  constructor(id: string, a: string, b: string, key: Uint8Array, establishedAt: number) {
    this.id = id;
    this.a = a;
    this.b = b;
    this.key = key;
    this.establishedAt = establishedAt;
  }

  connects(from: string, to: string): boolean {
    return (from === this.a && to === this.b) || (from === this.b && to === this.a);
  }

  peerOf(address: string): string {
    return address === this.a ? this.b : this.a;
  }

  nextSequence(from: string): number {
    const n = (this.#sent.get(from) ?? 0) + 1;
    this.#sent.set(from, n);
    return n;
  }

  /**
   * Throws REPLAY_DETECTED for a sequence seen before in another inbox message. The same inbox
   * message handled again (after a retry or a quarantine release) is not a replay.
   */
  acceptSequence(from: string, sequence: number, inboxSequence: number): void {
    let w = this.#received.get(from);
    if (w === undefined) {
      w = createSequenceWindow();
      this.#received.set(from, w);
    }
    const claim = `${from} ${sequence}`;
    try {
      const r = w.accept(sequence);
      if (r.gap !== undefined) this.gaps += r.gap.to - r.gap.from + 1;
    } catch (e) {
      if (
        e instanceof TroupeError &&
        e.code === ErrorCode.REPLAY_DETECTED &&
        this.#claims.get(claim) === inboxSequence
      ) {
        return;
      }
      throw e;
    }
    this.#claims.set(claim, inboxSequence);
    if (this.#claims.size > CLAIMS_KEPT) {
      const oldest = this.#claims.keys().next().value;
      if (oldest !== undefined) this.#claims.delete(oldest);
    }
  }
}

export type Channels = Map<string, Channel>;
