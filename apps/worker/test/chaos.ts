/**
 * Process-level fault injection on the cluster, shared by the recovery, fencing and chaos
 * tests: steady ordered load from several senders (uniquely identified increments, retried
 * with the same message id so "acknowledged" means stored once), recovery probes, and the
 * end-of-run invariant check over the ordered-counter fixture.
 */
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import type { WorkerStatus } from "@troupe/coordinator";
import { connect, shardOfAddress, type TroupeClient } from "@troupe/nats";
import { repo } from "./procs.js";

export const ORDERED_COUNTER = join(repo, "apps/worker/test/fixtures/ordered-counter.mjs");
export const AGENT_TYPE = "ordered-counter";

export interface OrderedValue {
  count: number;
  last: Record<string, number>;
  violations: number;
  duplicates: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export const agentKey = (a: number) => `a${a}`;
export const agentAddress = (a: number) => `${AGENT_TYPE}/${agentKey(a)}`;

/** Agents whose shard is one of `shards`. */
export function agentsOnShards(agents: number, shardCount: number, shards: Iterable<number>) {
  const set = new Set(shards);
  const out: number[] = [];
  for (let a = 0; a < agents; a++) {
    if (set.has(shardOfAddress(agentAddress(a), shardCount))) out.push(a);
  }
  return out;
}

export interface LoadOptions {
  urls: string[];
  namespace: string;
  agents: number;
  senders: number;
  /** Increments per second over all senders. */
  ratePerSec: number;
}

/**
 * Senders that each send increments to every agent in turn at a steady rate. Per sender and
 * agent the sequence numbers go 1, 2, 3… and a send waits for the one before it to be
 * acknowledged (per-sender FIFO is only promised for sends made in order); a failed send is
 * retried with the same message id until it is acknowledged.
 */
export class OrderedLoad {
  readonly clients: TroupeClient[] = [];
  /** Per "sender/agent": the highest sequence acknowledged. */
  readonly acked = new Map<string, number>();
  ackedTotal = 0;
  retries = 0;
  readonly #o: LoadOptions;
  readonly #chains = new Map<string, Promise<void>>();
  readonly #next = new Map<string, number>();
  #running = false;
  #loops: Promise<void>[] = [];

  constructor(options: LoadOptions) {
    this.#o = options;
  }

  async start(): Promise<void> {
    for (let s = 0; s < this.#o.senders; s++) {
      this.clients.push(await connect({ servers: this.#o.urls, namespace: this.#o.namespace }));
    }
    this.#running = true;
    const perSender = this.#o.ratePerSec / this.#o.senders;
    this.#loops = this.clients.map((client, s) => this.#loop(client, s, perSender));
  }

  async #loop(client: TroupeClient, s: number, perSec: number): Promise<void> {
    const tickMs = 50;
    let agent = s % this.#o.agents; // senders start apart
    let owed = 0;
    let last = performance.now();
    while (this.#running) {
      await sleep(tickMs);
      const now = performance.now();
      owed += ((now - last) / 1000) * perSec;
      last = now;
      for (; owed >= 1; owed--) {
        this.#send(client, s, agent);
        agent = (agent + 1) % this.#o.agents;
      }
    }
  }

  #send(client: TroupeClient, s: number, a: number): void {
    const sender = `s${s}`;
    const key = `${sender}/${a}`;
    const seq = (this.#next.get(key) ?? 0) + 1;
    this.#next.set(key, seq);
    const ref = client.ref(AGENT_TYPE, agentKey(a));
    const messageId = `${sender}-a${a}-${seq}`;
    const prev = this.#chains.get(key) ?? Promise.resolve();
    const p = prev.then(async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          await ref.send({ type: "inc", sender, seq }, { messageId });
          break;
        } catch {
          // the same id: stored once however many attempts reach the inbox
          this.retries++;
          await sleep(Math.min(2000, 100 * attempt));
        }
      }
      this.acked.set(key, seq);
      this.ackedTotal++;
    });
    this.#chains.set(key, p);
  }

  /** Stops sending; resolves once every send made is acknowledged. */
  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#loops);
    await Promise.all(this.#chains.values());
  }

  /** What every agent must hold once all is processed: per sender, the last acknowledged seq. */
  expected(a: number): { count: number; last: Record<string, number> } {
    const last: Record<string, number> = {};
    let count = 0;
    for (let s = 0; s < this.#o.senders; s++) {
      const n = this.acked.get(`s${s}/${a}`) ?? 0;
      if (n > 0) last[`s${s}`] = n;
      count += n;
    }
    return { count, last };
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close().catch(() => {})));
  }
}

/** One `get` (it queues behind everything sent to the agent before it), retried until answered. */
export async function getValue(
  client: TroupeClient,
  a: number,
  deadline: number,
): Promise<OrderedValue | undefined> {
  while (Date.now() < deadline) {
    try {
      return await client
        .ref(AGENT_TYPE, agentKey(a))
        .request<OrderedValue>(
          { type: "get" },
          { timeoutMs: Math.max(1000, Math.min(15_000, deadline - Date.now())) },
        );
    } catch {
      await sleep(200);
    }
  }
  return undefined;
}

/**
 * Recovery of `agents` after a fault at `faultAt` (Date.now()): for each, the time until it
 * processes a message sent right after the fault — its first processed message after it.
 */
export async function probeRecovery(
  client: TroupeClient,
  agents: readonly number[],
  faultAt: number,
  timeoutMs = 60_000,
): Promise<{ ms: number[]; unrecovered: number }> {
  const deadline = faultAt + timeoutMs;
  const ms: number[] = [];
  let unrecovered = 0;
  await Promise.all(
    agents.map(async (a) => {
      const v = await getValue(client, a, deadline);
      if (v === undefined) unrecovered++;
      else ms.push(Date.now() - faultAt);
    }),
  );
  return { ms, unrecovered };
}

export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export interface Verdict {
  acknowledged: number;
  counted: number;
  lost: number;
  duplicated: number;
  orderViolations: number;
  unreadable: number;
}

/**
 * Waits until every agent holds what was acknowledged to it (or the deadline passes), then
 * compares: increments lost or counted twice, per-sender order violations.
 */
export async function verifyCounts(
  load: OrderedLoad,
  agents: number,
  timeoutMs: number,
): Promise<Verdict> {
  const client = load.clients[0]!;
  const deadline = Date.now() + timeoutMs;
  const values = new Map<number, OrderedValue>();
  const done = (a: number) => {
    const v = values.get(a);
    return v !== undefined && v.count >= load.expected(a).count;
  };
  while (Date.now() < deadline) {
    const todo = Array.from({ length: agents }, (_, a) => a).filter((a) => !done(a));
    if (todo.length === 0) break;
    for (let i = 0; i < todo.length; i += 100) {
      await Promise.all(
        todo.slice(i, i + 100).map(async (a) => {
          const v = await getValue(client, a, Math.min(deadline, Date.now() + 10_000));
          if (v !== undefined) values.set(a, v);
        }),
      );
    }
    if (todo.every(done)) break;
    await sleep(1000);
  }
  const v: Verdict = {
    acknowledged: load.ackedTotal,
    counted: 0,
    lost: 0,
    duplicated: 0,
    orderViolations: 0,
    unreadable: 0,
  };
  for (let a = 0; a < agents; a++) {
    const got = values.get(a);
    const want = load.expected(a);
    if (got === undefined) {
      v.unreadable++;
      v.lost += want.count;
      continue;
    }
    v.counted += got.count;
    v.duplicated += got.duplicates;
    v.orderViolations += got.violations - got.duplicates;
    // counted once each = count minus the ones counted twice; fewer than acknowledged: lost
    const once = got.count - got.duplicates;
    if (once < want.count) v.lost += want.count - once;
    // an increment counted that was never acknowledged would show as count above the sum
    if (once > want.count) v.duplicated += once - want.count;
  }
  return v;
}

/** A worker's own status (undefined while it does not answer: dead or paused). */
export async function workerStatus(
  nc: NatsConnection,
  namespace: string,
  id: string,
  timeoutMs = 1000,
): Promise<WorkerStatus | undefined> {
  try {
    const m = await nc.request(`troupe.${namespace}.ctl.worker.${id}.status`, "", {
      timeout: timeoutMs,
    });
    const s = m.json<WorkerStatus | { error: unknown }>();
    return "error" in s ? undefined : s;
  } catch {
    return undefined;
  }
}

/**
 * Double-activation evidence from the workers' counters: a snapshot write that lost its
 * compare-and-set means two activations of one agent were live and both tried to store
 * (fencing should make it impossible: a stale worker refuses before writing). Kept per
 * worker incarnation (a killed process's counters are the last ones polled).
 */
export class ActivationWatch {
  readonly #latest = new Map<string, { conflicts: number; fenced: number; fences: number }>();
  readonly #nc: NatsConnection;
  readonly #namespace: string;

  constructor(nc: NatsConnection, namespace: string) {
    this.#nc = nc;
    this.#namespace = namespace;
  }

  /** Polls each worker; `incarnation` tells a restarted process (same id) from the last. */
  async poll(workers: ReadonlyArray<{ id: string; incarnation: number }>): Promise<void> {
    await Promise.all(
      workers.map(async (w) => {
        const s = await workerStatus(this.#nc, this.#namespace, w.id);
        if (s === undefined) return;
        this.#latest.set(`${w.id}#${w.incarnation}`, {
          conflicts: s.backend?.snapshotConflicts ?? 0,
          fenced: s.backend?.fenced ?? 0,
          fences: s.fences ?? 0,
        });
      }),
    );
  }

  totals(): { conflicts: number; fenced: number; fences: number } {
    const t = { conflicts: 0, fenced: 0, fences: 0 };
    for (const v of this.#latest.values()) {
      t.conflicts += v.conflicts;
      t.fenced += v.fenced;
      t.fences += v.fences;
    }
    return t;
  }
}
