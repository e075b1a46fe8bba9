/**
 * `--inbox-max-age`: how long the namespace's inbox stream keeps messages, which is how far
 * back replay reaches and much of what NATS stores. A duration such as `30m`, `12h`, `7d`.
 */
import { AGE_UNIT_MS, DEFAULT_DUPLICATE_WINDOW_MS } from "@troupe/nats/internal";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { InvalidArgumentError } from "commander";

const UNIT_MS = { ms: 1, ...AGE_UNIT_MS } as const;

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/;

/**
 * The shortest inbox max age: a minute, and no shorter than the inbox's message-id dedup
 * window (the server refuses a stream whose dedup window outlasts its messages).
 */
export const MIN_INBOX_MAX_AGE_MS = Math.max(UNIT_MS.m, DEFAULT_DUPLICATE_WINDOW_MS);

/** The longest JetStream can hold (max_age is int64 nanoseconds), ms. */
export const MAX_INBOX_MAX_AGE_MS = Math.floor(2 ** 63 / 1e6);

/**
 * An inbox max age in ms from `30m`, `12h`, `7d`, `1.5h` (units s, m, h, d; `ms` or no unit:
 * milliseconds). CONFIG_ERROR, saying what is wanted, for anything else, for less than
 * MIN_INBOX_MAX_AGE_MS and for more than JetStream can hold.
 */
export function parseInboxMaxAge(text: string): number {
  const match = DURATION.exec(text.trim());
  if (match === null) {
    throw configError(
      text,
      "must be a duration: a number with a unit s, m, h or d (30m, 12h, 7d, 1.5h), or milliseconds",
    );
  }
  const unit = (match[2] ?? "ms") as keyof typeof UNIT_MS;
  const ms = Math.round(Number(match[1]) * UNIT_MS[unit]);
  if (ms < MIN_INBOX_MAX_AGE_MS) {
    throw configError(
      text,
      `must be at least ${MIN_INBOX_MAX_AGE_MS / UNIT_MS.m}m: the inbox keeps messages at least a minute, and at least its ${DEFAULT_DUPLICATE_WINDOW_MS / UNIT_MS.m}-minute message-id dedup window`,
    );
  }
  if (ms > MAX_INBOX_MAX_AGE_MS) {
    throw configError(
      text,
      `must be at most ${Math.floor(MAX_INBOX_MAX_AGE_MS / UNIT_MS.d)}d (what JetStream can hold)`,
    );
  }
  return ms;
}

/** `--inbox-max-age` for commander: a bad value is a usage error (exit code 2). */
export function inboxMaxAge(value: string): number {
  try {
    return parseInboxMaxAge(value);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

function configError(text: string, message: string): TroupeError {
  return new TroupeError(ErrorCode.CONFIG_ERROR, message, { details: { inboxMaxAge: text } });
}
