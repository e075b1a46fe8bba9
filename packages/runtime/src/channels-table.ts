/** Established channels: a key shared by two endpoints, with per-direction sequence numbers. */
import { type SequenceWindow, createSequenceWindow } from "@troupe/wire";

export class Channel {
  readonly id: string;
  /** The endpoint that established it. */
  readonly a: string;
  readonly b: string;
  readonly key: Uint8Array;
  readonly establishedAt: number;
  readonly #sent = new Map<string, number>();
  readonly #received = new Map<string, SequenceWindow>();
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

  /** Throws REPLAY_DETECTED for a sequence seen before. */
  acceptSequence(from: string, sequence: number): void {
    let w = this.#received.get(from);
    if (w === undefined) {
      w = createSequenceWindow();
      this.#received.set(from, w);
    }
    const r = w.accept(sequence);
    if (r.gap !== undefined) this.gaps += r.gap.to - r.gap.from + 1;
  }
}

export type Channels = Map<string, Channel>;
