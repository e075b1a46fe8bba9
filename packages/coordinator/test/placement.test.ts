import { describe, expect, it } from "vitest";
import { movedShards, placeShards } from "../src/placement.js";

function counts(target: ReadonlyArray<string | null>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const w of target) if (w !== null) out[w] = (out[w] ?? 0) + 1;
  return out;
}

function expectBalanced(target: ReadonlyArray<string | null>, workers: string[]): void {
  expect(target.every((w) => w !== null && workers.includes(w))).toBe(true);
  const c = counts(target);
  const floor = Math.floor(target.length / workers.length);
  for (const w of workers) expect([floor, floor + 1]).toContain(c[w] ?? 0);
}

const none = (n: number): Array<string | null> => Array.from({ length: n }, () => null);

describe("placeShards", () => {
  it("spreads unassigned shards evenly", () => {
    const target = placeShards(none(64), ["a", "b", "c"]);
    expectBalanced(target, ["a", "b", "c"]);
    expect(counts(target)).toEqual({ a: 22, b: 21, c: 21 });
  });

  it("leaves everything unassigned without workers", () => {
    expect(placeShards(["a", "b", null], [])).toEqual([null, null, null]);
  });

  it("join: moves only the new worker's share", () => {
    const before = placeShards(none(64), ["a", "b"]);
    const after = placeShards(before, ["a", "b", "c"]);
    expectBalanced(after, ["a", "b", "c"]);
    // c gets 21; exactly those come from a and b
    expect(movedShards(before, after)).toBe(21);
    expect(counts(after).c).toBe(21);
    after.forEach((w, i) => {
      if (w !== "c") expect(w).toBe(before[i]);
    });
  });

  it("leave: only the leaver's shards move, to the others", () => {
    const before = placeShards(none(64), ["a", "b", "c", "d"]);
    const after = placeShards(before, ["a", "b", "d"]);
    expectBalanced(after, ["a", "b", "d"]);
    before.forEach((w, i) => {
      if (w !== "c") expect(after[i]).toBe(w);
    });
    expect(movedShards(before, after)).toBe(16);
  });

  it("dead: a dead owner's shards (passed as null) are spread over the survivors", () => {
    const before = placeShards(none(10), ["a", "b", "c"]);
    const owners = before.map((w) => (w === "b" ? null : w));
    const after = placeShards(owners, ["a", "c"]);
    expectBalanced(after, ["a", "c"]);
    expect(movedShards(owners, after)).toBe(0);
  });

  it("draining: a worker left out of the list loses all its shards", () => {
    const before = placeShards(none(16), ["a", "b"]);
    const after = placeShards(before, ["a"]);
    expect(after.every((w) => w === "a")).toBe(true);
    expect(movedShards(before, after)).toBe(8);
  });

  it("stability: a balanced placement is a fixed point", () => {
    for (const [n, k] of [
      [64, 1],
      [64, 3],
      [7, 3],
      [3, 5],
      [256, 7],
    ] as const) {
      const workers = Array.from({ length: k }, (_, i) => `w${i}`);
      const once = placeShards(none(n), workers);
      expect(placeShards(once, workers)).toEqual(once);
      expect(placeShards(once, [...workers].reverse())).toEqual(once);
    }
  });

  it("stability: an uneven but balanced placement is kept as it is", () => {
    // 5 shards on 2 workers: either worker may hold the third one
    const owners = ["b", "a", "b", "a", "b"];
    expect(placeShards(owners, ["a", "b"])).toEqual(owners);
  });

  it("moves the fewest shards from a lopsided placement", () => {
    // a holds 10 of 12; b holds 2; c is new: quotas 4/4/4, a gives up 6
    const owners = [...Array(10).fill("a"), "b", "b"];
    const after = placeShards(owners, ["a", "b", "c"]);
    expect(counts(after)).toEqual({ a: 4, b: 4, c: 4 });
    expect(movedShards(owners, after)).toBe(6);
  });

  it("fills the emptiest workers first while handoffs are pending", () => {
    // 3 of a's shards are being released (null): they go to the new worker c
    const owners = ["a", "a", "a", null, null, null, "b", "b", "b"];
    const after = placeShards(owners, ["a", "b", "c"]);
    expect(after.slice(3, 6)).toEqual(["c", "c", "c"]);
  });

  it("ignores unknown owners and duplicate workers", () => {
    const after = placeShards(["x", "x", "a", "a"], ["a", "a", "b"]);
    expectBalanced(after, ["a", "b"]);
    expect(after[2]).toBe("a");
    expect(after[3]).toBe("a");
  });
});
