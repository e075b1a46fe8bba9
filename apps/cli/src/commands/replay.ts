/**
 * `troupe replay <type/key>`: replays an agent from its inbox history on the worker that owns
 * it (`troupe.<ns>.ctl.worker.<id>.replay`). `--dry-run` prints each event with the state it
 * led to and changes nothing; without it the agent's stored state is rebuilt.
 */

import {
  type ControlError,
  type ReplayReply,
  type ReplayRequest,
  workerControlSubject,
} from "@troupe/coordinator";
import { shardOfAddress } from "@troupe/nats";
import { messageOf } from "../format.js";
import { failure, type Io, usageError, writeLine } from "../io.js";
import { parseAddress, toJson } from "../message.js";
import { isTimeout, openNats } from "../nats.js";
import { type GlobalOptions, resolveSettings } from "../settings.js";
import { requestStatus } from "./status.js";

export interface ReplayOptions extends GlobalOptions {
  fromSeq?: number;
  dryRun?: boolean;
  json?: boolean;
  limit?: number;
  timeout?: number;
}

export async function replay(address: string, options: ReplayOptions, io: Io): Promise<number> {
  const { type, key } = parseAddress(address);
  const agent = `${type}/${key}`;
  const timeoutMs = options.timeout ?? 30_000;
  if (options.fromSeq !== undefined && options.fromSeq < 1) {
    throw usageError("--from-seq must be 1 or more");
  }
  const settings = resolveSettings(options, io);
  const nc = await openNats(settings);
  try {
    const status = await requestStatus(nc, settings);
    const shard = shardOfAddress(agent, status.shardCount);
    const owner = status.workers.find((w) => w.shards.includes(shard));
    if (owner === undefined) {
      throw failure(
        `no worker owns shard ${shard} of ${agent} right now (troupe status shows the assignment)`,
      );
    }
    const request: ReplayRequest = {
      address: agent,
      dryRun: options.dryRun === true,
      ...(options.fromSeq === undefined ? {} : { fromSequence: options.fromSeq }),
      ...(options.limit === undefined ? {} : { limit: options.limit }),
    };
    let text: string;
    try {
      const msg = await nc.request(
        workerControlSubject(settings.namespace, owner.id, "replay"),
        JSON.stringify(request),
        { timeout: timeoutMs },
      );
      text = new TextDecoder().decode(msg.data);
    } catch (e) {
      throw failure(
        isTimeout(e)
          ? `worker ${owner.id} did not finish the replay of ${agent} within ${timeoutMs} ms (a longer --timeout may help)`
          : `replay request to worker ${owner.id} failed: ${messageOf(e)}`,
        { cause: e },
      );
    }
    let reply: ReplayReply | ControlError;
    try {
      reply = JSON.parse(text) as typeof reply;
    } catch (e) {
      throw failure(`worker ${owner.id}'s replay reply is not JSON: ${messageOf(e)}`);
    }
    if ("error" in reply) {
      if (options.json) writeLine(io.stdout, text);
      throw failure(`replay of ${agent} failed: ${reply.error.code}: ${reply.error.message}`);
    }
    if (options.json) {
      writeLine(io.stdout, text);
      return 0;
    }
    writeLine(io.stdout, render(reply));
    return 0;
  } finally {
    await nc.close();
  }
}

const short = (v: unknown, max = 90): string => {
  const s = v === undefined ? "-" : toJson(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
};

/** One line per step: sequence, sender, kind, event ⇒ state; what it would have sent. */
export function render(r: ReplayReply): string {
  const lines: string[] = [];
  const range = r.toSequence >= r.fromSequence ? `${r.fromSequence}..${r.toSequence}` : "none";
  lines.push(
    `${r.dryRun ? "dry run" : "replay"} of ${r.address} on worker ${r.worker}: ` +
      `${r.total} message${r.total === 1 ? "" : "s"}, inbox sequences ${range}`,
  );
  if (r.steps.length < r.total) {
    lines.push(
      r.truncated
        ? "  (the steps did not fit in one reply: use a smaller --limit or --json)"
        : `  (the last ${r.steps.length} steps; --limit shows more)`,
    );
  }
  for (const s of r.steps) {
    const { type, ...fields } = (s.event ?? {}) as { type?: unknown };
    const what =
      typeof type === "string"
        ? `${type}${Object.keys(fields).length > 0 ? ` ${short(fields, 50)}` : ""}`
        : short(s.event, 50);
    const head = `  #${s.sequence} ${s.from} ${s.kind} ${what}`;
    if (s.outcome !== "applied") {
      lines.push(`${head}  ${s.outcome.toUpperCase()}: ${s.error ?? ""}`);
      continue;
    }
    lines.push(`${head}  ⇒ ${short(s.value, 40)} ${short(s.context)}`);
    for (const o of s.outputs) {
      lines.push(`      ${o.kind} to ${o.to}: ${short(o.payload)}`);
    }
  }
  lines.push(`final state: ${short(r.final.value, 60)} ${short(r.final.context, 200)}`);
  if (r.failed > 0) lines.push(`${r.failed} message(s) failed in the replay`);
  lines.push(
    r.dryRun
      ? "dry run: nothing was stored or sent"
      : r.stored
        ? `stored: ${r.address} now has this state (nothing was sent again)`
        : `${r.address} has no stored state: nothing to rebuild`,
  );
  return lines.join("\n");
}
