/**
 * The demo conversation against the cluster: the client asks `planner/<key>` for a plan; the
 * planner (hosted by some worker) fans tasks out to `helper/<role>` agents (likely on other
 * workers) and replies once all have answered. The inter-agent traffic happens on the
 * workers, so the client shows the request, the reply and where each agent lives.
 */

import { agentId, shardOf } from "@troupe/wire";
import type { Client } from "../client.js";
import type { ClusterStatus } from "../commands/status.js";
import { duration, messageOf, table } from "../format.js";

export const DEFAULT_GOAL = "start a weekly engineering newsletter";
export const DEMO_AGENTS = [
  "planner/demo",
  "helper/research",
  "helper/write",
  "helper/review",
] as const;

interface PlanStep {
  role: string;
  answer: string;
}

type PlanReply =
  | { type: "plan.done"; goal: string; steps: PlanStep[]; summary: string }
  | { type: "plan.failed"; goal: string; reason: string }
  | { type: "plan.busy"; goal: string };

export interface DemoOutcome {
  ok: boolean;
  reply?: PlanReply;
  error?: string;
  ms: number;
}

function line(from: string, to: string, kind: string, what: string): string {
  return `  ${from.padEnd(16)} → ${to.padEnd(16)} ${kind.padEnd(8)} ${what}`;
}

export async function runClusterDemo(
  client: Client,
  options: { goal: string; key: string; timeoutMs: number; print: (line: string) => void },
): Promise<DemoOutcome> {
  const { print, goal, key } = options;
  const planner = `planner/${key}`;
  print("Demo: a planner splits a goal into tasks, three helper agents work on them, the");
  print("planner gathers their answers and replies. The agents run on the workers above.");
  print("");
  print(line("client", planner, "request", `plan "${goal}"`));
  const started = Date.now();
  try {
    const reply = await client
      .ref("planner", key)
      .request<PlanReply>({ type: "plan", goal }, { timeoutMs: options.timeoutMs });
    const ms = Date.now() - started;
    const what =
      reply.type === "plan.done" ? `plan.done (${reply.steps.length} steps)` : reply.type;
    print(line(planner, "client", "reply", `${what} after ${duration(ms)}`));
    print("");
    if (reply.type === "plan.done") {
      print(reply.summary);
      return { ok: true, reply, ms };
    }
    const reason = reply.type === "plan.failed" ? reply.reason : "the planner is busy";
    print(`The planner answered ${reply.type}: ${reason}`);
    return { ok: false, reply, ms, error: `${reply.type}: ${reason}` };
  } catch (e) {
    const ms = Date.now() - started;
    const code = (e as { code?: unknown }).code;
    const error = `${typeof code === "string" ? `${code}: ` : ""}${messageOf(e)}`;
    print(line(planner, "client", "error", error));
    return { ok: false, error, ms };
  }
}

/** Which shard and worker each agent belongs to, by the current assignment. */
export function placementTable(status: ClusterStatus, addresses: readonly string[]): string {
  const ownerOf = new Map<number, string>();
  for (const w of status.workers) for (const s of w.shards) ownerOf.set(s, w.id);
  const rows = addresses.map((address) => {
    const slash = address.indexOf("/");
    const shard = shardOf(
      agentId(address.slice(0, slash), address.slice(slash + 1)),
      status.shardCount,
    );
    return [address, shard, ownerOf.get(shard) ?? "(unassigned)"];
  });
  return table(["agent", "shard", "worker"], rows);
}
