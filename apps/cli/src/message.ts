/** Parsing what `send` and `request` take on the command line: an address and a JSON event. */

import { parseAgentAddress } from "@troupe/wire";
import { messageOf } from "./format.js";
import { usageError } from "./io.js";

export interface AgentEvent {
  type: string;
  [field: string]: unknown;
}

/** `type/key` → its parts; anything else is a usage error (exit 2). */
export function parseAddress(address: string): { type: string; key: string } {
  try {
    return parseAgentAddress(address);
  } catch (e) {
    throw usageError(messageOf(e));
  }
}

/** A JSON object with a string `type` (an XState event); anything else is a usage error. */
export function parseEvent(text: string): AgentEvent {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw usageError(
      `the event is not valid JSON (${messageOf(e)}); quote it for the shell, e.g. '{"type":"get"}'`,
    );
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw usageError(`the event must be a JSON object such as '{"type":"get"}', got ${text}`);
  }
  const type = (value as { type?: unknown }).type;
  if (typeof type !== "string" || type === "") {
    throw usageError(`the event needs a string "type" field, e.g. '{"type":"get"}'`);
  }
  return value as AgentEvent;
}

/** JSON for output; bigints (receipt timestamps) as decimal strings. */
export function toJson(value: unknown, indent?: number): string {
  return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v), indent);
}
