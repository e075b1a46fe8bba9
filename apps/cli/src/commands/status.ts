/** `troupe status`: asks the coordinator leader (`troupe.<ns>.ctl.status`) who runs what. */

import type { NatsConnection } from "@nats-io/transport-node";
import {
  type ClusterStatus as CoordinatorStatus,
  controlSubject,
  type WorkerSummary,
} from "@troupe/coordinator";
import { duration, messageOf, shardRanges, table } from "../format.js";
import { failure, type Io, writeLine } from "../io.js";
import { isNoResponders, isTimeout, openNats } from "../nats.js";
import { type GlobalOptions, resolveSettings, type Settings } from "../settings.js";

/** The part of the `ctl.status` reply (docs/cluster.md) the CLI reads. */
export type ClusterStatus = Pick<
  CoordinatorStatus,
  "namespace" | "shardCount" | "leader" | "epoch" | "workers" | "unassigned"
>;

export interface StatusOptions extends GlobalOptions {
  json?: boolean;
  timeout?: number;
}

/**
 * One status request. Fails with a CliError that says what is wrong: no coordinator
 * (nobody serves the subject), no reply in time, or an error reply.
 */
export async function requestStatus(
  nc: NatsConnection,
  settings: Settings,
  timeoutMs = 3000,
): Promise<ClusterStatus> {
  let data: Uint8Array;
  try {
    const msg = await nc.request(controlSubject(settings.namespace, "status"), "{}", {
      timeout: timeoutMs,
    });
    data = msg.data;
  } catch (e) {
    throw statusRequestError(e, settings, timeoutMs);
  }
  let reply: unknown;
  try {
    reply = JSON.parse(new TextDecoder().decode(data));
  } catch (e) {
    throw failure(`the coordinator's status reply is not JSON: ${messageOf(e)}`);
  }
  const error = (reply as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  if (error !== undefined && error !== null) {
    throw failure(`status failed: ${String(error.code)}: ${String(error.message)}`);
  }
  return normalise(reply);
}

function statusRequestError(e: unknown, settings: Settings, timeoutMs: number): Error {
  if (isNoResponders(e)) {
    return failure(
      `no coordinator is running in namespace ${settings.namespace} at ${settings.natsUrl}`,
    );
  }
  if (isTimeout(e)) {
    return failure(
      `the coordinator of namespace ${settings.namespace} at ${settings.natsUrl} did not answer within ${timeoutMs} ms`,
    );
  }
  return failure(`status request failed: ${messageOf(e)}`, { cause: e });
}

/** Tolerates missing fields, so an older or newer coordinator still prints something. */
function normalise(reply: unknown): ClusterStatus {
  const r = (reply ?? {}) as Partial<Record<keyof ClusterStatus, unknown>>;
  const nums = (v: unknown): number[] =>
    Array.isArray(v) ? v.filter((n): n is number => typeof n === "number") : [];
  const workers = (Array.isArray(r.workers) ? r.workers : []).map((w) => {
    const x = (w ?? {}) as Partial<Record<keyof WorkerSummary, unknown>>;
    return {
      id: String(x.id ?? "?"),
      shards: nums(x.shards),
      activeAgents: typeof x.activeAgents === "number" ? x.activeAgents : 0,
      heartbeatAgeMs: typeof x.heartbeatAgeMs === "number" ? x.heartbeatAgeMs : Number.NaN,
      draining: x.draining === true,
    };
  });
  return {
    namespace: String(r.namespace ?? "?"),
    shardCount: typeof r.shardCount === "number" ? r.shardCount : 0,
    leader: typeof r.leader === "string" ? r.leader : null,
    epoch: typeof r.epoch === "number" ? r.epoch : 0,
    workers,
    unassigned: nums(r.unassigned),
  };
}

/** The status as people read it: a summary line, a table of workers, unassigned shards. */
export function renderStatus(status: ClusterStatus): string {
  const lines = [
    `namespace ${status.namespace}: ${status.shardCount} shards, ` +
      `${status.workers.length} worker${status.workers.length === 1 ? "" : "s"}, ` +
      `leader ${status.leader ?? "(none)"} (epoch ${status.epoch})`,
  ];
  if (status.workers.length === 0) {
    lines.push("no workers have joined yet");
  } else {
    const workers = [...status.workers].sort((a, b) => a.id.localeCompare(b.id));
    lines.push(
      table(
        ["worker", "shards", "shard ranges", "active agents", "heartbeat age", "draining"],
        workers.map((w) => [
          w.id,
          w.shards.length,
          shardRanges(w.shards),
          w.activeAgents,
          duration(w.heartbeatAgeMs),
          w.draining ? "yes" : "no",
        ]),
      ),
    );
  }
  lines.push(
    `unassigned shards: ${status.unassigned.length === 0 ? "none" : `${status.unassigned.length} (${shardRanges(status.unassigned)})`}`,
  );
  return lines.join("\n");
}

export async function status(options: StatusOptions, io: Io): Promise<number> {
  const settings = resolveSettings(options, io);
  const nc = await openNats(settings);
  try {
    const timeoutMs = options.timeout ?? 3000;
    if (options.json) {
      // the raw reply, for scripts: what the coordinator said, not our normalised view
      const msg = await nc
        .request(controlSubject(settings.namespace, "status"), "{}", { timeout: timeoutMs })
        .catch((e: unknown) => {
          throw statusRequestError(e, settings, timeoutMs);
        });
      const text = new TextDecoder().decode(msg.data);
      writeLine(io.stdout, text.trim());
      const error = (safeParse(text) as { error?: unknown } | undefined)?.error;
      return error === undefined ? 0 : 1;
    }
    writeLine(io.stdout, renderStatus(await requestStatus(nc, settings, timeoutMs)));
    return 0;
  } finally {
    await nc.close();
  }
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
