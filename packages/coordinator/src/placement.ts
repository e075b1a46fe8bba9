/**
 * Shard placement: which live worker should own each shard. Pure, so the leader's choices
 * can be tested without a server: balanced (floor or ceil per worker) and moving as few
 * shards as possible from where they are now.
 */

/**
 * Computes the target owner of every shard.
 *
 * `owners[i]` is shard i's current owner, or null when nobody owns it (unassigned, being
 * handed off, or its owner is dead or draining: pass those as null or leave them out of
 * `workers`). `workers` are the live workers that may take shards.
 *
 * Every worker ends with `floor(n / k)` or `floor(n / k) + 1` shards. A shard stays where it
 * is unless its owner is gone or holds more than its share, so the number of moved shards is
 * the smallest any balanced placement can have: the extra (`+1`) slots go to the workers that
 * hold the most already. Ties break by worker id and shard index, so the result is
 * deterministic. With no workers every shard's target is null.
 */
export function placeShards(
  owners: ReadonlyArray<string | null>,
  workers: readonly string[],
): Array<string | null> {
  const live = [...new Set(workers)].sort();
  const n = owners.length;
  if (live.length === 0) return owners.map(() => null);

  const held = new Map<string, number[]>(live.map((w) => [w, []]));
  const free: number[] = [];
  owners.forEach((owner, shard) => {
    const list = owner === null ? undefined : held.get(owner);
    if (list === undefined) free.push(shard);
    else list.push(shard);
  });

  const base = Math.floor(n / live.length);
  let extra = n % live.length;
  // the workers holding the most keep the `+1` slots: fewest shards have to move
  const byHolding = [...live].sort(
    (a, b) => held.get(b)!.length - held.get(a)!.length || (a < b ? -1 : a > b ? 1 : 0),
  );
  const quota = new Map<string, number>();
  for (const w of byHolding) {
    quota.set(w, base + (extra > 0 ? 1 : 0));
    if (extra > 0) extra--;
  }

  const target: Array<string | null> = owners.map(() => null);
  for (const w of live) {
    const shards = held.get(w)!;
    const keep = quota.get(w)!;
    // keep the lowest shard indices; the rest go back to the pool
    shards.forEach((shard, j) => {
      if (j < keep) target[shard] = w;
      else free.push(shard);
    });
  }
  free.sort((a, b) => a - b);

  // fill the emptiest workers first, so a partial round (some handoffs still pending)
  // already evens out the load
  const count = new Map(live.map((w) => [w, Math.min(held.get(w)!.length, quota.get(w)!)]));
  for (const shard of free) {
    let best: string | undefined;
    for (const w of live) {
      if (count.get(w)! >= quota.get(w)!) continue;
      if (best === undefined || count.get(w)! < count.get(best)!) best = w;
    }
    // cannot happen: the quotas add up to n
    if (best === undefined) break;
    target[shard] = best;
    count.set(best, count.get(best)! + 1);
  }
  return target;
}

/** How many shards `target` takes away from their current owner (assigning a free shard is no move). */
export function movedShards(
  owners: ReadonlyArray<string | null>,
  target: ReadonlyArray<string | null>,
): number {
  let moved = 0;
  owners.forEach((owner, i) => {
    if (owner !== null && owner !== target[i]) moved++;
  });
  return moved;
}
