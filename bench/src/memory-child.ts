/**
 * One memory case, run by activation.ts as `node --expose-gc memory-child.js <case> …`;
 * prints its figures as one JSON line.
 *   xstate <n>               heap of n started bare XState actors
 *   troupe <n>               heap of n active idle Troupe agents (embedded, no passivation)
 *   bounded <n> <idleMs> [live]   n distinct agents touched once each, passivation after
 *                                 idleMs; with `live`, a full gc every 500 ms (the live set)
 */
import { createRuntime } from "@troupe/runtime";
import { createActor } from "xstate";
import { counter, counterMachine } from "./activation.js";

const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with node --expose-gc");
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function heap(): Promise<number> {
  // two rounds with a turn in between: weak references and finalizers settle
  gc!();
  await sleep(10);
  gc!();
  return process.memoryUsage().heapUsed;
}

/** Sends one `bump` to each of `keys(i)`, i < n, with a window of 2,000 in flight. */
async function touch(
  runtime: Awaited<ReturnType<typeof createRuntime>>,
  n: number,
  key: (i: number) => string,
  onWindow?: (done: number) => void,
): Promise<void> {
  const window = 2_000;
  for (let i = 0; i < n; ) {
    const sends: Promise<unknown>[] = [];
    for (let j = 0; j < window && i < n; j++, i++) {
      sends.push(runtime.ref(counter, key(i)).send({ type: "bump" }));
    }
    await Promise.all(sends);
    onWindow?.(i);
    await new Promise<void>((r) => setImmediate(r));
  }
}

async function xstateCase(n: number) {
  const warm = Array.from({ length: 100 }, () => createActor(counterMachine).start());
  const actors: unknown[] = new Array(n);
  const before = await heap();
  for (let i = 0; i < n; i++) actors[i] = createActor(counterMachine).start();
  const after = await heap();
  if (actors.length !== n || warm.length !== 100) throw new Error("unreachable");
  return {
    agents: n,
    bytesPerAgent: (after - before) / n,
    heapBeforeBytes: before,
    heapAfterBytes: after,
  };
}

async function troupeCase(n: number) {
  const runtime = await createRuntime({ agents: [counter], idleTimeoutMs: 0 });
  await touch(runtime, 100, (i) => `warm-${i}`);
  await runtime.settled();
  const before = await heap();
  await touch(runtime, n, (i) => `a${i}`);
  await runtime.settled();
  const after = await heap();
  const active = runtime.stats().activeAgents;
  if (active !== n + 100) throw new Error(`${active} active, expected ${n + 100}`);
  await runtime.shutdown();
  return {
    agents: n,
    bytesPerAgent: (after - before) / n,
    heapBeforeBytes: before,
    heapAfterBytes: after,
  };
}

async function boundedCase(n: number, idleTimeoutMs: number, forceGc: boolean) {
  const runtime = await createRuntime({ agents: [counter], idleTimeoutMs });
  const base = await heap();
  const t0 = performance.now();
  let touched = 0;
  let peakHeap = 0;
  let peakActive = 0;
  let peakLive = 0;
  let peakRss = 0;
  const series: Array<{
    s: number;
    heapBytes: number;
    liveBytes?: number;
    active: number;
    touched: number;
  }> = [];
  const sample = () => {
    const h = process.memoryUsage().heapUsed;
    const active = runtime.stats().activeAgents;
    peakHeap = Math.max(peakHeap, h);
    peakRss = Math.max(peakRss, process.memoryUsage.rss());
    peakActive = Math.max(peakActive, active);
    return { h, active };
  };
  const fast = setInterval(sample, 100);
  // every 500 ms: heapUsed as it is (garbage included) and, with forceGc, the live set
  // right after a full gc
  const slow = setInterval(() => {
    const { h, active } = sample();
    const s = Math.round((performance.now() - t0) / 100) / 10;
    if (!forceGc) {
      series.push({ s, heapBytes: h, active, touched });
      return;
    }
    gc!();
    const live = process.memoryUsage().heapUsed;
    peakLive = Math.max(peakLive, live);
    series.push({ s, heapBytes: h, liveBytes: live, active, touched });
  }, 500);
  await touch(
    runtime,
    n,
    (i) => `d${i}`,
    (done) => {
      touched = done;
      sample();
    },
  );
  await runtime.settled();
  const sentAt = performance.now();
  const deadline = Date.now() + idleTimeoutMs * 20 + 30_000;
  while (runtime.stats().activeAgents > 0 && Date.now() < deadline) await sleep(50);
  clearInterval(fast);
  clearInterval(slow);
  sample();
  const stats = runtime.stats();
  const end = await heap();
  await runtime.shutdown();
  return {
    distinct: n,
    idleTimeoutMs,
    seconds: (sentAt - t0) / 1000,
    heapBaseBytes: base,
    peakHeapBytes: peakHeap,
    peakActive,
    peakLiveBytes: forceGc ? peakLive : undefined,
    peakRssBytes: peakRss,
    heapEndBytes: end,
    activations: stats.activations,
    passivations: stats.passivations,
    series,
  };
}

const [kind, a, b, c] = process.argv.slice(2);
const result =
  kind === "xstate"
    ? await xstateCase(Number(a))
    : kind === "troupe"
      ? await troupeCase(Number(a))
      : kind === "bounded"
        ? await boundedCase(Number(a), Number(b), c === "live")
        : undefined;
if (result === undefined) throw new Error(`unknown case ${kind}`);
console.log(JSON.stringify(result));
