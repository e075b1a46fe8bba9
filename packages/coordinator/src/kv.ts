/** KV plumbing shared by the leader and the workers: CAS conflicts, resilient watches. */
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import type { KV, KvEntry, KvWatchEntry, KvWatchOptions } from "@nats-io/kv";
import type { Logger } from "@troupe/runtime";

/** A compare-and-set write lost: the key moved on since it was read. */
export function isCasConflict(e: unknown): boolean {
  if (e instanceof JetStreamApiError) {
    return (
      e.code === JetStreamApiCodes.StreamWrongLastSequence ||
      e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown
    );
  }
  return e instanceof Error && /wrong last sequence/i.test(e.message);
}

export const isLive = (e: KvEntry | null): e is KvEntry =>
  e !== null && e.operation !== "DEL" && e.operation !== "PURGE";

export const sleep = (ms: number): Promise<void> =>
  new Promise((r) => {
    setTimeout(r, ms).unref?.();
  });

export interface Follower {
  /** Resolves once the first watch is established (or the follower was stopped). */
  readonly started: Promise<void>;
  stop(): void;
}

/**
 * Follows keys of a bucket: calls `onEntry` for every entry the watch yields and starts the
 * watch again (with backoff) when it ends or fails while not stopped. A restarted watch
 * yields the last values again, so handlers must be idempotent (state-based).
 */
export function follow(
  kv: KV,
  options: KvWatchOptions,
  onEntry: (e: KvWatchEntry) => void,
  logger: Logger,
  what: string,
): Follower {
  let stopped = false;
  let current: { stop(): void } | undefined;
  let markStarted: () => void = () => {};
  const started = new Promise<void>((r) => {
    markStarted = r;
  });
  void (async () => {
    let delay = 100;
    while (!stopped) {
      try {
        const iter = await kv.watch(options);
        current = iter;
        markStarted();
        if (stopped) break;
        delay = 100;
        for await (const e of iter) {
          if (stopped) break;
          try {
            onEntry(e);
          } catch (err) {
            logger.error({ err, key: e.key }, `could not handle a change of ${what}`);
          }
        }
      } catch (err) {
        if (!stopped) logger.warn({ err }, `watch of ${what} failed; retrying`);
      }
      if (stopped) break;
      await sleep(delay);
      delay = Math.min(delay * 2, 5_000);
    }
    markStarted();
  })();
  return {
    started,
    stop() {
      stopped = true;
      current?.stop();
      markStarted();
    },
  };
}

/** A key's latest known state: revision-ordered, so a late read never overwrites a newer one. */
export interface Tracked<T> {
  revision: number;
  value: T | undefined;
}

/** Applies an entry to a revision-tracked map; returns true when it changed the map. */
export function track<T>(
  map: Map<string, Tracked<T>>,
  key: string,
  revision: number,
  value: T | undefined,
): boolean {
  const old = map.get(key);
  if (old !== undefined && old.revision >= revision) return false;
  map.set(key, { revision, value });
  return true;
}

/** Reads the current entries under `filter` (keys, then a get per key). */
export async function readAll(kv: KV, filter = ">"): Promise<KvEntry[]> {
  const keys: string[] = [];
  for await (const k of await kv.keys(filter)) keys.push(k);
  const entries = await Promise.all(keys.map((k) => kv.get(k)));
  return entries.filter(isLive);
}
