/** defineAgent: an XState v5 machine plus what the runtime needs to host it. */
import type { StandardSchemaV1 } from "@standard-schema/spec";
import { ErrorCode, TroupeError, validateAgentType } from "@troupe/wire";
import type { AnyStateMachine, EventFromLogic, InputFrom } from "xstate";

export interface RateLimit {
  /** Sustained messages per second. */
  perSecond: number;
  /** Bucket size: messages accepted in a burst. Default = perSecond. */
  burst?: number;
}

export interface AuthorizeArgs {
  /** Sender address (`type/key` of an agent, `~<id>` of a client). */
  from: string;
  to: string;
  event: unknown;
}

export interface AgentConfig<TMachine extends AnyStateMachine> {
  /** The agent type: the first half of `type/key`. */
  type: string;
  /** The XState v5 machine. Child actors must be named in `setup({ actors })`. */
  machine: TMachine;
  /**
   * Per-event validators (Standard Schema: zod, valibot, arktype…), keyed by event type.
   * An event that fails validation is rejected with VALIDATION_ERROR to its sender.
   */
  events?: { [K in EventFromLogic<TMachine>["type"]]?: StandardSchemaV1 };
  /** Reject events whose type has no validator (default false: only listed types are checked). */
  strictEvents?: boolean;
  /** Input for a fresh activation (no snapshot yet). Gets the agent's key. */
  input?: (key: string) => InputFrom<TMachine>;
  /** Which senders may message this agent. Default: everyone. */
  authorize?: (args: AuthorizeArgs) => boolean;
  /** Per-agent rate limit; excess messages are rejected with RATE_LIMITED. */
  rateLimit?: RateLimit;
  /** Passivate after this long without messages (ms). Default: the runtime's idleTimeoutMs. */
  idleTimeoutMs?: number;
}

export interface AgentDefinition<TMachine extends AnyStateMachine = AnyStateMachine>
  extends Readonly<AgentConfig<TMachine>> {
  readonly kind: "troupe.agent";
}

export function defineAgent<TMachine extends AnyStateMachine>(
  config: AgentConfig<TMachine>,
): AgentDefinition<TMachine> {
  validateAgentType(config.type);
  const m = config.machine as unknown;
  if (
    typeof m !== "object" ||
    m === null ||
    typeof (m as { getPersistedSnapshot?: unknown }).getPersistedSnapshot !== "function" ||
    typeof (m as { transition?: unknown }).transition !== "function"
  ) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `agent "${config.type}": machine must be an XState v5 machine (createMachine or setup(...).createMachine)`,
    );
  }
  if (config.events !== undefined) {
    for (const [type, schema] of Object.entries(config.events)) {
      if (!isStandardSchema(schema)) {
        throw new TroupeError(
          ErrorCode.INVALID_ARGUMENT,
          `agent "${config.type}": validator for event "${type}" is not a Standard Schema (zod, valibot, arktype…)`,
        );
      }
    }
  }
  if (config.rateLimit !== undefined && !(config.rateLimit.perSecond > 0)) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `agent "${config.type}": rateLimit.perSecond must be > 0`,
    );
  }
  return Object.freeze({ ...config, kind: "troupe.agent" as const });
}

function isStandardSchema(v: unknown): v is StandardSchemaV1 {
  return (
    typeof v === "object" &&
    v !== null &&
    typeof (v as { "~standard"?: { validate?: unknown } })["~standard"]?.validate === "function"
  );
}

/**
 * Child actors whose logic was given inline (not by name from `setup({ actors })`) cannot be
 * persisted: XState's development build throws, its production build writes an empty object
 * that comes back broken. Find them in a live snapshot so the error can say which.
 */
export function findInlineChildren(snapshot: unknown, path = ""): string[] {
  const out: string[] = [];
  const children = (snapshot as { children?: Record<string, unknown> } | null)?.children;
  if (children === undefined || children === null || typeof children !== "object") return out;
  for (const [id, child] of Object.entries(children)) {
    const ref = child as { src?: unknown; getSnapshot?: () => unknown } | undefined;
    const here = path === "" ? id : `${path}.${id}`;
    if (typeof ref?.src !== "string") out.push(here);
    if (typeof ref?.getSnapshot === "function")
      out.push(...findInlineChildren(ref.getSnapshot(), here));
  }
  return out;
}
