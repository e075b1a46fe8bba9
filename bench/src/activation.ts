/**
 * Activation and memory on the embedded runtime (one process, no server):
 * - cold activation: a request to a never-seen agent (nothing stored) and to an agent
 *   restored from its stored snapshot, until its reply, next to the same request to an
 *   agent that is already active;
 * - heap per active idle agent next to a bare XState actor of the same machine, and a run
 *   touching many distinct agents with passivation on (bounded memory). Heap figures come
 *   from child processes started with `--expose-gc` (bench/src/memory-child.ts), one per
 *   case, so each starts from a clean heap.
 */
import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRuntime, defineAgent, reply } from "@troupe/runtime";
import { assign, setup } from "xstate";

export const counterMachine = setup({
  types: { context: {} as { count: number }, events: {} as { type: "inc" } | { type: "bump" } },
}).createMachine({
  context: { count: 0 },
  on: {
    // a plain send (no reply expected): the memory cases
    bump: { actions: assign({ count: ({ context }) => context.count + 1 }) },
    // as a request: the activation case
    inc: {
      actions: [
        assign({ count: ({ context }) => context.count + 1 }),
        reply(({ context }) => ({ type: "count", count: context.count })),
      ],
    },
  },
});
export const counter = defineAgent({ type: "counter", machine: counterMachine });

export interface ActivationFigures {
  agents: number;
  /** ms per request, in order */
  warm: number[];
  coldEmpty: number[];
  coldRestore: number[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function pass(agents: number, prefix: string): Promise<ActivationFigures> {
  const runtime = await createRuntime({ agents: [counter], idleTimeoutMs: 200 });
  try {
    const ask = async (key: string): Promise<[number, number]> => {
      const t0 = performance.now();
      const r = await runtime.ref(counter, key).request<{ count: number }>({ type: "inc" });
      return [performance.now() - t0, r.count];
    };
    const coldEmpty: number[] = [];
    const first: number[] = [];
    for (let i = 0; i < agents; i++) {
      const [ms, count] = await ask(`${prefix}${i}`);
      coldEmpty.push(ms);
      first.push(count);
    }
    const warm: number[] = [];
    await ask(`${prefix}hot`);
    for (let i = 0; i < agents; i++) warm.push((await ask(`${prefix}hot`))[0]);
    const deadline = Date.now() + 60_000;
    while (runtime.stats().activeAgents > 0) {
      if (Date.now() > deadline) throw new Error("agents did not passivate");
      await sleep(50);
    }
    const coldRestore: number[] = [];
    for (let i = 0; i < agents; i++) {
      const [ms, count] = await ask(`${prefix}${i}`);
      if (count <= first[i]!) throw new Error(`${prefix}${i} was not restored (count ${count})`);
      coldRestore.push(ms);
    }
    return { agents, warm, coldEmpty, coldRestore };
  } finally {
    await runtime.shutdown();
  }
}

export async function activationBench(agents: number): Promise<ActivationFigures> {
  await pass(Math.min(500, agents), "warmup-"); // JIT warm-up, not measured
  return pass(agents, "a");
}

const CHILD = join(dirname(fileURLToPath(import.meta.url)), "memory-child.js");

/** Runs one case of memory-child.ts in a fresh `node --expose-gc` and returns its JSON. */
export function memoryCase<T>(args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ["--expose-gc", CHILD, ...args],
      { maxBuffer: 64 * 1024 * 1024, timeout: 600_000 },
      (err, stdout) => {
        if (err) return reject(err);
        const last = stdout.trim().split("\n").pop() ?? "";
        try {
          resolve(JSON.parse(last) as T);
        } catch (e) {
          reject(e);
        }
      },
    );
  });
}

export interface HeapFigures {
  agents: number;
  bytesPerAgent: number;
  heapBeforeBytes: number;
  heapAfterBytes: number;
}

export interface BoundedFigures {
  distinct: number;
  idleTimeoutMs: number;
  seconds: number;
  heapBaseBytes: number;
  peakHeapBytes: number;
  peakActive: number;
  /** the largest live set: heapUsed right after a full gc, forced every 500 ms (live runs) */
  peakLiveBytes?: number;
  peakRssBytes: number;
  /** after every agent passivated, gc: what stays (the embedded store's snapshots) */
  heapEndBytes: number;
  /** one sample every 500 ms: seconds since start, heapUsed, live set, active agents, touched */
  series: Array<{
    s: number;
    heapBytes: number;
    liveBytes?: number;
    active: number;
    touched: number;
  }>;
}

export interface MemoryFigures {
  troupe: HeapFigures;
  xstate: HeapFigures;
  /** heapUsed as V8 left it */
  bounded: BoundedFigures;
  /** the same run with a full gc forced every 500 ms: the live set */
  boundedLive: BoundedFigures;
}

export async function memoryBench(
  agents: number,
  distinct: number,
  idleTimeoutMs: number,
): Promise<MemoryFigures> {
  const xstate = await memoryCase<HeapFigures>(["xstate", String(agents)]);
  const troupe = await memoryCase<HeapFigures>(["troupe", String(agents)]);
  const bounded = await memoryCase<BoundedFigures>([
    "bounded",
    String(distinct),
    String(idleTimeoutMs),
  ]);
  const boundedLive = await memoryCase<BoundedFigures>([
    "bounded",
    String(distinct),
    String(idleTimeoutMs),
    "live",
  ]);
  return { troupe, xstate, bounded, boundedLive };
}
