/**
 * `troupe quarantine`, `troupe release` and `troupe quarantined`: the coordinator leader's
 * quarantine control API (`troupe.<ns>.ctl.quarantine|release|quarantined`, docs/cluster.md).
 */

import type { NatsConnection } from "@nats-io/transport-node";
import {
  controlSubject,
  type QuarantinedAgent,
  type QuarantinedReply,
  type QuarantineReply,
  type QuarantineRequest,
  type ReleaseReply,
  type ReleaseRequest,
} from "@troupe/coordinator";
import { duration, messageOf, table } from "../format.js";
import { failure, type Io, usageError, writeLine } from "../io.js";
import { parseAddress } from "../message.js";
import { isNoResponders, isTimeout, withNats } from "../nats.js";
import type { GlobalOptions, Settings } from "../settings.js";

export interface QuarantineOptions extends GlobalOptions {
  reason?: string;
  json?: boolean;
  timeout?: number;
}

/**
 * Asks the leader; an `{ error }` reply becomes a failure printed as its code and message.
 * The reply's fields may be missing (an older or newer coordinator), hence Partial.
 */
async function ask<Reply>(
  nc: NatsConnection,
  settings: Settings,
  verb: string,
  body: object,
  timeoutMs: number,
): Promise<{ text: string; reply: Partial<Reply> }> {
  let data: Uint8Array;
  try {
    const msg = await nc.request(controlSubject(settings.namespace, verb), JSON.stringify(body), {
      timeout: timeoutMs,
    });
    data = msg.data;
  } catch (e) {
    if (isNoResponders(e)) {
      throw failure(
        `no coordinator is running in namespace ${settings.namespace} at ${settings.natsUrl}`,
      );
    }
    if (isTimeout(e)) {
      throw failure(
        `the coordinator of namespace ${settings.namespace} did not answer within ${timeoutMs} ms`,
      );
    }
    throw failure(`${verb} request failed: ${messageOf(e)}`, { cause: e });
  }
  const text = new TextDecoder().decode(data);
  let reply: unknown;
  try {
    reply = JSON.parse(text);
  } catch (e) {
    throw failure(`the coordinator's ${verb} reply is not JSON: ${messageOf(e)}`);
  }
  const r = (reply ?? {}) as Record<string, unknown>;
  const error = r.error as { code?: unknown; message?: unknown } | undefined;
  if (error !== undefined && error !== null) {
    throw failure(`${String(error.code)}: ${String(error.message)}`);
  }
  return { text, reply: r as Partial<Reply> };
}

export async function quarantine(
  address: string,
  options: QuarantineOptions,
  io: Io,
): Promise<number> {
  const { type, key } = parseAddress(address);
  const reason = options.reason?.trim() ?? "";
  if (reason === "") throw usageError('--reason must say why (e.g. --reason "bad input")');
  return withNats(options, io, async (nc, settings) => {
    const request: QuarantineRequest = { address: `${type}/${key}`, reason };
    const { text, reply } = await ask<QuarantineReply>(
      nc,
      settings,
      "quarantine",
      request,
      options.timeout ?? 10_000,
    );
    if (options.json) writeLine(io.stdout, text.trim());
    else writeLine(io.stdout, `quarantined ${type}/${key} on ${String(reply.worker)}: ${reason}`);
    return 0;
  });
}

export async function release(
  address: string,
  options: QuarantineOptions,
  io: Io,
): Promise<number> {
  // a client inbox (`~id`) or an endpoint (`#hex`) quarantined as a sender is released too
  const target = /^[~#]\S+$/.test(address)
    ? address
    : (({ type, key }) => `${type}/${key}`)(parseAddress(address));
  return withNats(options, io, async (nc, settings) => {
    const request: ReleaseRequest = { address: target };
    const { text, reply } = await ask<ReleaseReply>(
      nc,
      settings,
      "release",
      request,
      options.timeout ?? 10_000,
    );
    if (options.json) writeLine(io.stdout, text.trim());
    else {
      const held = typeof reply.held === "number" ? reply.held : 0;
      writeLine(
        io.stdout,
        `released ${target} on ${String(reply.worker)}: ${held} held message${held === 1 ? "" : "s"} delivered first, in order`,
      );
    }
    return 0;
  });
}

export async function quarantined(options: QuarantineOptions, io: Io): Promise<number> {
  return withNats(options, io, async (nc, settings) => {
    const { text, reply } = await ask<QuarantinedReply>(
      nc,
      settings,
      "quarantined",
      {},
      options.timeout ?? 10_000,
    );
    if (options.json) {
      writeLine(io.stdout, text.trim());
      return 0;
    }
    const agents = Array.isArray(reply.agents) ? reply.agents : [];
    writeLine(io.stdout, renderQuarantined(agents, settings.namespace, Date.now()));
    return 0;
  });
}

/** The table people read: one row per quarantined agent. */
export function renderQuarantined(
  agents: readonly QuarantinedAgent[],
  namespace: string,
  now: number,
): string {
  if (agents.length === 0) return `no agents are quarantined in namespace ${namespace}`;
  return [
    `${agents.length} quarantined agent${agents.length === 1 ? "" : "s"} in namespace ${namespace}`,
    table(
      ["agent", "reason", "by", "since", "parked"],
      agents.map((a) => [
        a.address,
        a.reason.length > 60 ? `${a.reason.slice(0, 59)}…` : a.reason,
        a.by,
        `${new Date(a.since).toISOString()} (${duration(now - a.since)} ago)`,
        a.releasing === undefined ? a.held : `${a.held} (releasing)`,
      ]),
    ),
  ].join("\n");
}
