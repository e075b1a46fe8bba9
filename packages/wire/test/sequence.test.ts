import { describe, expect, it } from "vitest";
import { createSequenceCounter, createSequenceWindow, ErrorCode } from "../src/index.js";
import { createRandom, expectCode } from "./helpers.js";

describe("sequence window", () => {
  it("accepts in-order sequences without gaps", () => {
    const window = createSequenceWindow();
    for (let seq = 1; seq <= 5000; seq++) expect(window.accept(seq)).toEqual({});
    expect(window.highest).toBe(5000);
    expect(window.windowSize).toBe(1024);
  });

  it("rejects a replay of the latest and of earlier sequences", () => {
    const window = createSequenceWindow();
    for (let seq = 1; seq <= 10; seq++) window.accept(seq);
    expectCode(() => window.accept(10), ErrorCode.REPLAY_DETECTED, /already seen/);
    expectCode(() => window.accept(3), ErrorCode.REPLAY_DETECTED, /already seen/);
    expect(window.accept(11)).toEqual({});
  });

  it("rejects sequences older than the window", () => {
    const window = createSequenceWindow({ windowSize: 64 });
    window.accept(1);
    window.accept(200); // gap 2..199
    expect(window.accept(137)).toEqual({}); // 200 - 137 = 63: the oldest still inside
    expectCode(() => window.accept(136), ErrorCode.REPLAY_DETECTED, /older than the replay window/);
    expectCode(() => window.accept(1), ErrorCode.REPLAY_DETECTED);
  });

  it("reports gaps when a sequence jumps ahead, from the very first", () => {
    const window = createSequenceWindow();
    expect(window.accept(3)).toEqual({ gap: { from: 1, to: 2 } });
    expect(window.accept(4)).toEqual({});
    expect(window.accept(10)).toEqual({ gap: { from: 5, to: 9 } });
    expect(window.accept(5_000)).toEqual({ gap: { from: 11, to: 4_999 } });
  });

  it("accepts a late arrival that fills a gap exactly once", () => {
    const window = createSequenceWindow();
    window.accept(1);
    expect(window.accept(5)).toEqual({ gap: { from: 2, to: 4 } });
    expect(window.accept(3)).toEqual({});
    expectCode(() => window.accept(3), ErrorCode.REPLAY_DETECTED);
    expect(window.accept(2)).toEqual({});
    expect(window.accept(4)).toEqual({});
    for (const seq of [2, 3, 4, 5]) expectCode(() => window.accept(seq), ErrorCode.REPLAY_DETECTED);
    expect(window.highest).toBe(5);
  });

  it("forgets stale bits when the window slides far ahead", () => {
    const window = createSequenceWindow({ windowSize: 32 });
    for (let seq = 1; seq <= 32; seq++) window.accept(seq);
    // 32 slots: seq 65 lands on the slot seq 33 and 1 used; 33..64 are unseen, not replays
    expect(window.accept(65)).toEqual({ gap: { from: 33, to: 64 } });
    expect(window.accept(40)).toEqual({});
    expect(window.accept(34)).toEqual({});
    expectCode(() => window.accept(33), ErrorCode.REPLAY_DETECTED, /older/);
    expect(window.accept(1_000_000)).toEqual({ gap: { from: 66, to: 999_999 } });
    expect(window.accept(999_990)).toEqual({});
  });

  it("agrees with a simple model on random traffic", () => {
    const random = createRandom(7);
    for (const windowSize of [1, 5, 32, 33, 100, 1024]) {
      const window = createSequenceWindow({ windowSize });
      const seen = new Set<number>();
      let highest = 0;
      for (let i = 0; i < 5_000; i++) {
        const seq = Math.max(1, highest + random.int(windowSize * 2 + 20) - windowSize - 10);
        const replay = seen.has(seq) || (seq <= highest && highest - seq >= windowSize);
        if (replay) {
          expectCode(() => window.accept(seq), ErrorCode.REPLAY_DETECTED);
          continue;
        }
        const result = window.accept(seq);
        if (seq > highest + 1) expect(result).toEqual({ gap: { from: highest + 1, to: seq - 1 } });
        else expect(result).toEqual({});
        seen.add(seq);
        highest = Math.max(highest, seq);
      }
    }
  });

  it("refuses invalid sequences and window sizes", () => {
    const window = createSequenceWindow();
    for (const bad of [0, -1, 1.5, Number.NaN, 2 ** 53, "1", null]) {
      expectCode(() => window.accept(bad as number), ErrorCode.INVALID_ARGUMENT);
    }
    for (const windowSize of [0, -5, 1.5, 2 ** 21]) {
      expectCode(() => createSequenceWindow({ windowSize }), ErrorCode.INVALID_ARGUMENT);
    }
    expect(window.highest).toBe(0);
  });
});

describe("sequence counter", () => {
  it("counts from 1, or resumes after a given number", () => {
    const counter = createSequenceCounter();
    expect(counter.current).toBe(0);
    expect([counter.next(), counter.next(), counter.next()]).toEqual([1, 2, 3]);
    expect(counter.current).toBe(3);
    const resumed = createSequenceCounter({ last: 41 });
    expect(resumed.next()).toBe(42);
  });

  it("feeds a window without gaps or replays", () => {
    const counter = createSequenceCounter();
    const window = createSequenceWindow();
    for (let i = 0; i < 100; i++) expect(window.accept(counter.next())).toEqual({});
  });

  it("stops at the largest safe integer and refuses a bad start", () => {
    const counter = createSequenceCounter({ last: Number.MAX_SAFE_INTEGER - 1 });
    expect(counter.next()).toBe(Number.MAX_SAFE_INTEGER);
    expectCode(() => counter.next(), ErrorCode.INVALID_STATE);
    for (const last of [-1, 0.5, Number.NaN]) {
      expectCode(() => createSequenceCounter({ last }), ErrorCode.INVALID_ARGUMENT);
    }
  });
});
