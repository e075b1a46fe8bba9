/**
 * Waiting for a namespace with a signal (no server: every attempt fails transiently, on a
 * fake clock): an abort ends the wait at once with SHUTDOWN, and no attempt follows it.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ensureNamespaceRetrying, openNamespace } from "../src/index.js";

/** A connection every attempt fails on transiently (`ensureNamespace` reads `info` first). */
function failingConnection(): { nc: NatsConnection; attempts: () => number } {
  let attempts = 0;
  const nc = {
    get info(): never {
      attempts++;
      throw new TroupeError(ErrorCode.STORAGE_ERROR, "JetStream is electing leaders", {
        retryAfterMs: 1000,
      });
    },
  } as unknown as NatsConnection;
  return { nc, attempts: () => attempts };
}

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("waiting for a namespace with a signal", () => {
  it("openNamespace: an abort during the backoff ends it with SHUTDOWN; no attempt follows", async () => {
    const { nc, attempts } = failingConnection();
    const abort = new AbortController();
    const opening = openNamespace(nc, { namespace: "ns", signal: abort.signal });
    const outcome = opening.catch((e: unknown) => e);
    // attempts at 0, 250 and 750 ms; then it sleeps 1 s
    await vi.advanceTimersByTimeAsync(800);
    expect(attempts()).toBe(3);
    abort.abort();
    const e = (await outcome) as TroupeError;
    expect(e).toBeInstanceOf(TroupeError);
    expect(e.code).toBe(ErrorCode.SHUTDOWN);
    expect(e.message).toBe('stopped waiting for namespace "ns"');
    // the backoff woke up and left no timer behind; nothing tries again
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(attempts()).toBe(3);
  });

  it("ensureNamespaceRetrying: an abort ends it the same way", async () => {
    const { nc, attempts } = failingConnection();
    const abort = new AbortController();
    const outcome = ensureNamespaceRetrying(nc, { namespace: "ns", signal: abort.signal }).catch(
      (e: unknown) => e,
    );
    await vi.advanceTimersByTimeAsync(100);
    expect(attempts()).toBe(1);
    abort.abort();
    expect(((await outcome) as TroupeError).code).toBe(ErrorCode.SHUTDOWN);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(attempts()).toBe(1);
  });

  it("an aborted signal makes no attempt at all", async () => {
    const { nc, attempts } = failingConnection();
    await expect(
      openNamespace(nc, { namespace: "ns", signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({ code: ErrorCode.SHUTDOWN });
    expect(attempts()).toBe(0);
  });

  it("without a signal it keeps trying (and waitMs still bounds it)", async () => {
    const { nc, attempts } = failingConnection();
    const outcome = openNamespace(nc, { namespace: "ns", waitMs: 5_000 }).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(5_000);
    const e = (await outcome) as TroupeError;
    expect(e.code).toBe(ErrorCode.STORAGE_ERROR);
    expect(attempts()).toBeGreaterThan(3);
  });
});
