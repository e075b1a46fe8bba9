/**
 * An agent's message history, read back from the inbox stream (limits retention keeps it for
 * `max_age`): the input of replay. An ordered consumer filtered on the agent's own subject
 * reads it in stream order without disturbing the shard's durable consumer.
 */
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { ReplayMessage } from "@troupe/runtime";
import {
  DEFAULT_LIMITS,
  type DecodeLimits,
  decodeFrame,
  ErrorCode,
  type Frame,
  keyNameOf,
  TroupeError,
} from "@troupe/wire";
import { messageOf, transportError } from "./errors.js";
import { type NamespaceInfo, shardOfAddress, subjectToken } from "./namespace.js";

/** What reading a history needs of a namespace (a NamespaceInfo, or the backend itself). */
export type HistorySource = Pick<NamespaceInfo, "names" | "shardCount">;

export interface AgentHistoryOptions {
  /** First inbox sequence to read (default 1: all that the stream still holds). */
  fromSequence?: number;
  /** Stop after this inbox sequence (default: what is in the stream when reading starts). */
  toSequence?: number;
  limits?: DecodeLimits;
  /**
   * Turns a stored message into a frame (default: `decodeFrame`, which skips sealed ones). A
   * runtime that seals agent traffic passes its opener: frames sealed with its keys are
   * opened, plain ones skipped, as its open stage refused them when they arrived.
   */
  decode?: (bytes: Uint8Array) => Frame;
  /**
   * Told about each stored message that is not a frame for this agent's machine (it was
   * parked when it arrived, so it never changed the agent): garbage, a frame on a channel of
   * the channel API, or one `decode` refused.
   */
  onSkipped?: (sequence: number, reason: string) => void;
}

/** The agent's inbox messages in order, decoded. */
export async function* agentHistory(
  nc: NatsConnection,
  info: HistorySource,
  address: string,
  options: AgentHistoryOptions = {},
): AsyncGenerator<ReplayMessage> {
  const from = options.fromSequence ?? 1;
  if (!Number.isSafeInteger(from) || from < 1) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, `fromSequence must be >= 1, got ${from}`);
  }
  const shard = shardOfAddress(address, info.shardCount);
  const subject = info.names.inboxSubject(shard, subjectToken(address));
  const limits = options.limits ?? DEFAULT_LIMITS;
  const decode = options.decode ?? ((bytes: Uint8Array) => decodeFrame(bytes, limits));
  const js = jetstream(nc);
  let consumer: Awaited<ReturnType<typeof js.consumers.get>>;
  let pending: number;
  try {
    consumer = await js.consumers.get(info.names.inboxStream, {
      filter_subjects: [subject],
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: from,
    });
    pending = (await consumer.info()).num_pending;
  } catch (e) {
    throw transportError(`cannot read the history of ${address}`, e);
  }
  let last = 0;
  while (pending > 0) {
    let batch: Awaited<ReturnType<typeof consumer.fetch>>;
    try {
      batch = await consumer.fetch({ max_messages: Math.min(pending, 256), expires: 5_000 });
    } catch (e) {
      throw transportError(`cannot read the history of ${address}`, e);
    }
    let got = 0;
    for await (const m of batch) {
      got++;
      pending = m.info.pending;
      if (options.toSequence !== undefined && m.seq > options.toSequence) return;
      if (m.seq <= last) continue;
      last = m.seq;
      let frame: ReplayMessage["frame"];
      try {
        frame = decode(m.data);
      } catch (e) {
        options.onSkipped?.(m.seq, `not a frame: ${messageOf(e)}`);
        continue;
      }
      const channel = frame.envelope.channel;
      if (channel !== undefined && keyNameOf(channel) === undefined) {
        options.onSkipped?.(m.seq, "sealed on a channel");
        continue;
      }
      if (frame.envelope.to !== address) {
        options.onSkipped?.(m.seq, `addressed to ${frame.envelope.to}`);
        continue;
      }
      yield { sequence: m.seq, frame };
      if (pending === 0) break;
    }
    if (got === 0) {
      throw new TroupeError(
        ErrorCode.TRANSPORT_ERROR,
        `reading the history of ${address}: the server sent nothing while ${pending} message(s) were pending`,
        { retryAfterMs: 1000 },
      );
    }
  }
}
