/**
 * Sender quarantine: counts the frames each sender gets refused for being undecodable or
 * unopenable, says when one reaches the limit, and keeps the view of quarantined
 * senders the pipeline checks for every message (a map lookup, never a registry read).
 */
import { ErrorCode, type TroupeError } from "@troupe/wire";
import type { QuarantineEntry } from "./backend.js";

/**
 * Refusals that say the sender sent something broken or forged, not that the receiver failed.
 * Not REPLAY_DETECTED: a replay is someone else re-sending the sender's genuine frame, and
 * blaming the sender would let anyone who can publish get it quarantined with its own frames.
 */
const COUNTED: ReadonlySet<string> = new Set([
  ErrorCode.DECODE_ERROR,
  ErrorCode.CRYPTO_ERROR,
  ErrorCode.UNSUPPORTED_VERSION,
]);

/** Senders tracked at once, at most: a flood of forged addresses must not grow memory forever. */
const MAX_TRACKED = 10_000;

interface Failures {
  /** When each counted failure happened (ms), oldest first, only those inside the window. */
  at: number[];
  codes: string[];
  last: string;
}

export class SenderQuarantine {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #failures = new Map<string, Failures>();
  /** Senders whose frames are refused: this runtime's decisions and the registry's entries. */
  readonly #refused = new Map<string, QuarantineEntry>();
  /** Bumped on every change, so a registry listing begun before it does not undo it. */
  #generation = 0;

  constructor(limit: number, windowMs: number) {
    this.#limit = limit;
    this.#windowMs = windowMs;
  }

  get enabled(): boolean {
    return this.#limit > 0;
  }

  /** The entry refusing frames from `from`, if any: the per-message check. */
  refused(from: string): QuarantineEntry | undefined {
    return this.#refused.size === 0 ? undefined : this.#refused.get(from);
  }

  /**
   * Counts a refusal against its sender. Returns the quarantine reason when this one brings
   * the sender to the limit within the window (and forgets its count), else undefined.
   */
  failed(from: string, err: TroupeError, now: number): string | undefined {
    if (!this.enabled || !COUNTED.has(err.code) || this.#refused.has(from)) return undefined;
    let f = this.#failures.get(from);
    if (f === undefined) {
      if (this.#failures.size >= MAX_TRACKED) this.#evict(now);
      f = { at: [], codes: [], last: "" };
      this.#failures.set(from, f);
    }
    const since = now - this.#windowMs;
    while (f.at.length > 0 && f.at[0]! <= since) {
      f.at.shift();
      f.codes.shift();
    }
    f.at.push(now);
    f.codes.push(err.code);
    f.last = `${err.code}: ${err.message}`;
    if (f.at.length < this.#limit) return undefined;
    this.#failures.delete(from);
    const counts = new Map<string, number>();
    for (const c of f.codes) counts.set(c, (counts.get(c) ?? 0) + 1);
    const kinds = [...counts].map(([c, n]) => `${n} ${c}`).join(", ");
    return `sender refused ${f.at.length} frames within ${this.#windowMs} ms (${kinds}); last: ${f.last}`;
  }

  /** Makes an entry take effect here at once (this runtime's own decision, or a watch event). */
  set(entry: QuarantineEntry): void {
    this.#generation++;
    if (entry.refuseFrames === true && entry.releasing === undefined) {
      this.#refused.set(entry.address, entry);
      this.#failures.delete(entry.address);
    } else {
      this.#refused.delete(entry.address);
    }
  }

  delete(address: string): void {
    this.#generation++;
    this.#refused.delete(address);
  }

  get generation(): number {
    return this.#generation;
  }

  /**
   * Replaces the view with a full listing of the registry, unless something changed since
   * the listing began (`generation` then): that listing may miss it, the next one will not.
   */
  replace(entries: readonly QuarantineEntry[], generation: number): boolean {
    if (generation !== this.#generation) return false;
    this.#refused.clear();
    for (const e of entries) {
      if (e.refuseFrames === true && e.releasing === undefined) this.#refused.set(e.address, e);
    }
    return true;
  }

  /** Drops senders whose failures all left the window; if none did, the oldest tracked one. */
  #evict(now: number): void {
    const since = now - this.#windowMs;
    for (const [from, f] of this.#failures) {
      if ((f.at[f.at.length - 1] ?? 0) <= since) this.#failures.delete(from);
    }
    if (this.#failures.size >= MAX_TRACKED) {
      const oldest = this.#failures.keys().next().value;
      if (oldest !== undefined) this.#failures.delete(oldest);
    }
  }
}
