/** Per-channel sequence numbers: a counter for senders, a sliding replay window for receivers. */
import { ErrorCode, TroupeError } from "./errors.js";

export interface SequenceGap {
  /** First missing sequence number. */
  from: number;
  /** Last missing sequence number (inclusive). */
  to: number;
}

export interface SequenceAcceptance {
  /** Present when this sequence jumped ahead: the numbers skipped over, not (yet) seen. */
  gap?: SequenceGap;
}

export interface SequenceWindow {
  /**
   * Records `seq` as seen. Throws REPLAY_DETECTED when it was seen before or is older than the
   * window (too old to tell, so treated as a replay), INVALID_ARGUMENT when it is not a
   * positive safe integer. A late arrival inside the window that fills a gap is accepted once.
   */
  accept(seq: number): SequenceAcceptance;
  /** Highest sequence accepted so far (0 before the first). */
  readonly highest: number;
  readonly windowSize: number;
}

export interface SequenceWindowOptions {
  /** How many sequence numbers below the highest are still tracked. Default 1024. */
  windowSize?: number;
}

const MAX_WINDOW_SIZE = 1 << 20;

function assertSequence(seq: unknown): asserts seq is number {
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `a sequence number must be a positive safe integer, got ${String(seq)}`,
    );
  }
}

/**
 * A receiver's view of one channel's sequence numbers: the highest seen plus a bitmap of the
 * `windowSize` numbers at and below it (as IPsec and DTLS do), so memory stays fixed however
 * long the channel lives.
 */
export function createSequenceWindow(options: SequenceWindowOptions = {}): SequenceWindow {
  const windowSize = options.windowSize ?? 1024;
  if (!Number.isSafeInteger(windowSize) || windowSize < 1 || windowSize > MAX_WINDOW_SIZE) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `windowSize must be an integer in [1, ${MAX_WINDOW_SIZE}], got ${String(windowSize)}`,
    );
  }
  // Bit (seq mod slots) says whether seq was seen, for seq in (highest - windowSize, highest].
  const slots = Math.ceil(windowSize / 32) * 32;
  const bits = new Uint32Array(slots / 32);
  let highest = 0;

  const isSet = (seq: number): boolean => {
    const slot = seq % slots;
    return (bits[slot >>> 5]! & (1 << (slot & 31))) !== 0;
  };
  const set = (seq: number): void => {
    const slot = seq % slots;
    bits[slot >>> 5]! |= 1 << (slot & 31);
  };
  const clear = (seq: number): void => {
    const slot = seq % slots;
    bits[slot >>> 5]! &= ~(1 << (slot & 31));
  };

  return {
    accept(seq: number): SequenceAcceptance {
      assertSequence(seq);
      if (seq > highest) {
        const skipped = seq - highest - 1;
        // The slots between the old and new highest now stand for numbers not seen yet.
        if (skipped + 1 >= slots) bits.fill(0);
        else for (let s = highest + 1; s < seq; s++) clear(s);
        const result: SequenceAcceptance =
          skipped > 0 ? { gap: { from: highest + 1, to: seq - 1 } } : {};
        highest = seq;
        set(seq);
        return result;
      }
      if (highest - seq >= windowSize) {
        throw new TroupeError(
          ErrorCode.REPLAY_DETECTED,
          `sequence ${seq} is older than the replay window (highest ${highest}, window ${windowSize})`,
          { details: { sequence: seq, highest, windowSize } },
        );
      }
      if (isSet(seq)) {
        throw new TroupeError(ErrorCode.REPLAY_DETECTED, `sequence ${seq} was already seen`, {
          details: { sequence: seq, highest },
        });
      }
      set(seq);
      return {};
    },
    get highest() {
      return highest;
    },
    windowSize,
  };
}

export interface SequenceCounter {
  /** The next sequence number: 1, 2, 3, … */
  next(): number;
  /** The last number handed out (0 before the first). */
  readonly current: number;
}

export interface SequenceCounterOptions {
  /** Resume after this number (e.g. from a snapshot). Default 0, so the first is 1. */
  last?: number;
}

/** A sender's sequence numbers for one channel. */
export function createSequenceCounter(options: SequenceCounterOptions = {}): SequenceCounter {
  let current = options.last ?? 0;
  if (!Number.isSafeInteger(current) || current < 0) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `last must be a non-negative safe integer, got ${String(current)}`,
    );
  }
  return {
    next() {
      if (current >= Number.MAX_SAFE_INTEGER) {
        throw new TroupeError(
          ErrorCode.INVALID_STATE,
          "sequence numbers exhausted for this channel",
        );
      }
      current += 1;
      return current;
    },
    get current() {
      return current;
    },
  };
}
