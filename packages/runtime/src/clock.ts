/** Time source for the runtime: real by default, controllable in tests. */

export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /** Nanoseconds since the Unix epoch, monotonic within a process. */
  nowNs(): bigint;
  setTimeout(fn: () => void, ms: number): Timer;
}

const startWallNs = BigInt(Date.now()) * 1_000_000n;
const startMono = process.hrtime.bigint();

// BigInt arithmetic allocates: reuse the last value while the microsecond has not moved on
let lastMicros = -1;
let lastNs = 0n;

export const systemClock: Clock = {
  now: () => Date.now(),
  nowNs: () => {
    const micros = Math.floor(performance.now() * 1000);
    if (micros !== lastMicros) {
      lastMicros = micros;
      lastNs = startWallNs + (process.hrtime.bigint() - startMono);
    }
    return lastNs;
  },
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return { cancel: () => clearTimeout(t) };
  },
};

/** A clock that only moves when told to: `advance(ms)` fires due timers in order. */
export interface ManualClock extends Clock {
  advance(ms: number): Promise<void>;
  readonly pending: number;
}

export function createManualClock(startMs = 1_700_000_000_000): ManualClock {
  let now = startMs;
  let nextId = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  return {
    now: () => now,
    nowNs: () => BigInt(now) * 1_000_000n,
    setTimeout(fn, ms) {
      const id = nextId++;
      timers.set(id, { at: now + Math.max(0, ms), fn });
      return { cancel: () => timers.delete(id) };
    },
    get pending() {
      return timers.size;
    },
    async advance(ms) {
      const until = now + ms;
      for (;;) {
        let dueId = -1;
        let due: { at: number; fn: () => void } | undefined;
        for (const [id, t] of timers) {
          if (t.at <= until && (due === undefined || t.at < due.at)) {
            due = t;
            dueId = id;
          }
        }
        if (due === undefined) break;
        timers.delete(dueId);
        now = Math.max(now, due.at);
        due.fn();
        // let the work the timer started run before the next one fires
        await new Promise<void>((r) => setImmediate(r));
      }
      now = until;
      await new Promise<void>((r) => setImmediate(r));
    },
  };
}
