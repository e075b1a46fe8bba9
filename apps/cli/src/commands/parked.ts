/**
 * `troupe parked`: the frames workers refused (UNKNOWN_AGENT, DECODE_ERROR, CRYPTO_ERROR, …),
 * read from the namespace's parked stream (`TROUPE_<NS>_PARKED`). Envelopes only: payloads
 * may be sealed or large, and `troupe replay` or NATS tooling read the stream itself.
 */

import type { NatsConnection } from "@nats-io/transport-node";
import {
  createNatsBackend,
  isNamespaceMissing,
  type NatsBackend,
  openNamespace,
} from "@troupe/nats";
import type { ParkedFrame } from "@troupe/runtime";
import {
  DEFAULT_LIMITS,
  type DecodeLimits,
  type Envelope,
  isTroupeError,
  peekEnvelope,
} from "@troupe/wire";
import { messageOf, table } from "../format.js";
import { failure, type Io, writeLine } from "../io.js";
import { toJson } from "../message.js";
import { withNats } from "../nats.js";
import type { GlobalOptions, Settings } from "../settings.js";

export interface ParkedOptions extends GlobalOptions {
  limit?: number;
  json?: boolean;
  timeout?: number;
}

/**
 * One parked frame as `--json` prints it (these names are the stable interface for scripts).
 * The envelope fields are null when the stored bytes have no readable envelope (garbage, or
 * a frame too large to keep).
 */
export interface ParkedEntry {
  /** When it was parked, ISO 8601. */
  at: string;
  /** Why, as an error code: UNKNOWN_AGENT, DECODE_ERROR, CRYPTO_ERROR, … */
  code: string;
  /** The recipient it was addressed to. */
  to: string;
  from: string | null;
  kind: string | null;
  messageId: string | null;
  /** Its sequence in the inbox stream (0 when it never was in the inbox). */
  inboxSequence: number;
  reason: string;
}

/** The last `limit` parked frames, newest last, and how many the stream holds. */
export interface ParkedListing {
  namespace: string;
  total: number;
  entries: ParkedEntry[];
}

export async function parked(options: ParkedOptions, io: Io): Promise<number> {
  const limit = options.limit ?? 20;
  const timeoutMs = options.timeout ?? 10_000;
  return withNats(options, io, async (nc, settings) => {
    const listing = await within(
      readParked(nc, settings, limit),
      timeoutMs,
      `NATS at ${settings.natsUrl} did not give the parked frames of namespace ${settings.namespace} within ${timeoutMs} ms`,
    );
    writeLine(io.stdout, options.json ? toJson(listing.entries) : renderParked(listing));
    return 0;
  });
}

async function readParked(
  nc: NatsConnection,
  settings: Settings,
  limit: number,
): Promise<ParkedListing> {
  const { namespace } = settings;
  let backend: NatsBackend;
  try {
    // a reader never creates the namespace (waitMs 0: missing means missing, now)
    const info = await openNamespace(nc, { namespace, waitMs: 0 });
    backend = await createNatsBackend({ nc, namespaceInfo: info });
  } catch (e) {
    if (isNamespaceMissing(e)) {
      throw failure(
        `namespace ${namespace} does not exist at ${settings.natsUrl} (a coordinator creates it)`,
      );
    }
    throw failure(`cannot open namespace ${namespace} at ${settings.natsUrl}: ${describe(e)}`, {
      cause: e,
    });
  }
  try {
    const [count, frames] = await Promise.all([backend.parked.count(), backend.parked.list(limit)]);
    // whatever the stream holds may be peeked: a frame parked for being too large included
    const limits: DecodeLimits = { ...DEFAULT_LIMITS, maxFrameBytes: backend.maxPayload };
    const entries = frames.map((p) => entryOf(p, limits));
    // one more may have been parked between the two reads
    return { namespace, total: Math.max(count, entries.length), entries };
  } catch (e) {
    throw failure(`cannot read the parked frames of namespace ${namespace}: ${describe(e)}`, {
      cause: e,
    });
  } finally {
    await backend.close().catch(() => {});
  }
}

function entryOf(p: ParkedFrame, limits: DecodeLimits): ParkedEntry {
  const envelope = p.frame?.envelope ?? (p.bytes === undefined ? undefined : peek(p.bytes));
  return {
    at: new Date(p.at).toISOString(),
    code: p.code,
    to: p.to,
    from: envelope?.from ?? null,
    kind: envelope?.kind ?? null,
    messageId: envelope?.messageId ?? null,
    inboxSequence: p.sequence,
    reason: p.reason,
  };

  // a sealed frame's envelope is in clear (not authenticated: it says who claims to send it)
  function peek(bytes: Uint8Array): Envelope | undefined {
    try {
      return peekEnvelope(bytes, limits).envelope;
    } catch {
      return undefined;
    }
  }
}

/** The table people read: a summary line, then one row per frame, newest last. */
export function renderParked(listing: ParkedListing): string {
  const { namespace, total, entries } = listing;
  if (entries.length === 0) return `nothing is parked in namespace ${namespace}`;
  const frames = `parked frame${total === 1 ? "" : "s"}`;
  const head =
    entries.length < total
      ? `showing the last ${entries.length} of ${total} ${frames} in namespace ${namespace}, newest last`
      : `${total} ${frames} in namespace ${namespace}, newest last`;
  return [
    head,
    table(
      ["at", "code", "to", "from", "kind", "message id", "inbox seq", "reason"],
      entries.map((e) => [
        e.at,
        e.code,
        e.to,
        e.from ?? "-",
        e.kind ?? "-",
        e.messageId ?? "-",
        e.inboxSequence > 0 ? e.inboxSequence : "-",
        e.reason.length > 60 ? `${e.reason.slice(0, 59)}…` : e.reason,
      ]),
    ),
  ].join("\n");
}

/** `work`, or a failure once `ms` have passed (the caller's finally closes what it left). */
function within<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(failure(message)), ms);
  });
  // once given up on, its own failure (the connection closing under it) is nobody's concern
  work.catch(() => {});
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

function describe(e: unknown): string {
  return isTroupeError(e) ? `${e.code}: ${e.message}` : messageOf(e);
}
