/**
 * Replay: an agent's message history run through its machine in a sandbox — every event
 * with the state it led to and what the agent would have sent, with no side effects (no
 * publish, no snapshot write). The debugging view of a conversation, and the way to rebuild
 * an agent's state from its history after fixing its code.
 */
import {
  ErrorCode,
  type Frame,
  type FrameKind,
  parseAgentAddress,
  TroupeError,
} from "@troupe/wire";
import { type AnyActor, type AnyStateMachine, createActor, fromPromise } from "xstate";
import { type Emitter, enterScope, exitScope, registerSystem } from "./actions.js";
import { type AgentDefinition, findInlineChildren } from "./agent.js";
import { toActorEvent } from "./host.js";
import { checkEvent } from "./stages.js";

/** One message of the history, as stored in the inbox. */
export interface ReplayMessage {
  /** Its inbox sequence. */
  sequence: number;
  frame: Frame;
}

/** What replaying one message did. */
export interface ReplayStep {
  sequence: number;
  messageId: string;
  from: string;
  kind: FrameKind;
  /** The event the machine got (`troupe.error` for an error frame). */
  event: unknown;
  /**
   * applied: the machine took it. rejected: its validator refused it (as it was at the time).
   * failed: the machine threw; the replay goes on from the state before it, as the live
   * agent would after its retries (and it would have been quarantined).
   */
  outcome: "applied" | "rejected" | "failed";
  /** Why it was rejected or failed. */
  error?: string;
  /** The machine's state value and context after this step. */
  value: unknown;
  context: unknown;
  /** What the agent would have sent because of it (not sent). */
  outputs: Array<{ to: string; kind: FrameKind; payload: unknown }>;
}

export interface ReplayResult {
  address: string;
  steps: ReplayStep[];
  /** The persisted snapshot at the end (`getPersistedSnapshot`). */
  snapshot: unknown;
  /** The inbox sequence of the last message replayed (0 when none). */
  lastSequence: number;
  /** Steps that failed. */
  failed: number;
  /**
   * Child actors (invoked or spawned) still running at the end. They did not run in the
   * sandbox, so a state with any cannot be stored as the agent's.
   */
  children: string[];
}

export interface ReplayOptions {
  /** Called with each step as it is made (to stream them out). */
  onStep?: (step: ReplayStep) => void;
  /** Start from this persisted snapshot instead of the machine's initial state. */
  from?: unknown;
}

type Output = ReplayStep["outputs"][number];

/** Collects what actions emit; nothing leaves the sandbox. */
class SandboxEmitter implements Emitter {
  readonly address: string;
  outputs: Output[] = [];
  faults: TroupeError[] = [];
  constructor(address: string) {
    this.address = address;
  }
  emit(to: string, kind: FrameKind, payload: unknown): void {
    this.outputs.push({ to, kind, payload });
  }
  fault(error: TroupeError): void {
    this.faults.push(error);
  }
}

/**
 * Replays `history` (in inbox order) into a fresh activation of `definition` for agent
 * `type/key`. Frames addressed to another agent, or sealed on a channel, are refused with
 * INVALID_ARGUMENT: they are not this agent's history.
 */
export async function replayAgent(
  definition: AgentDefinition,
  address: string,
  history: Iterable<ReplayMessage> | AsyncIterable<ReplayMessage>,
  options: ReplayOptions = {},
): Promise<ReplayResult> {
  const { type, key } = parseAgentAddress(address);
  if (type !== definition.type) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `cannot replay ${address} with the definition of agent type "${definition.type}"`,
    );
  }
  const machine = sandboxed(definition.machine as AnyStateMachine);
  const emitter = new SandboxEmitter(address);
  let actor = start(machine, emitter, options.from ?? undefined, definition, key);
  const steps: ReplayStep[] = [];
  let lastSequence = 0;
  let failed = 0;
  for await (const { sequence, frame } of history) {
    const env = frame.envelope;
    if (env.to !== address) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        `message ${env.messageId} (inbox sequence ${sequence}) is addressed to ${env.to}, not ${address}`,
      );
    }
    if (sequence <= lastSequence) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        `history out of order: inbox sequence ${sequence} after ${lastSequence}`,
      );
    }
    lastSequence = sequence;
    // the event the machine gets, as the host makes it (an error frame: `troupe.error`)
    const event = toActorEvent(frame.message.payload, env);
    const step: ReplayStep = {
      sequence,
      messageId: env.messageId,
      from: env.from,
      kind: env.kind,
      event,
      outcome: "applied",
      value: undefined,
      context: undefined,
      outputs: [],
    };
    // the pipeline's order: validate, then authorize (on the validated event)
    let verdict = await validate(definition, event);
    if (
      "event" in verdict &&
      definition.authorize !== undefined &&
      !definition.authorize({ from: env.from, to: address, event: verdict.event })
    ) {
      verdict = { refused: `${env.from} may not message ${address}` };
    }
    if ("refused" in verdict) {
      step.outcome = "rejected";
      step.error = verdict.refused;
    } else {
      step.event = verdict.event;
      const before = machine.getPersistedSnapshot(actor.getSnapshot() as never);
      emitter.outputs = [];
      const error = send(actor, emitter, verdict.event, frame, sequence);
      if (error !== undefined) {
        failed++;
        step.outcome = "failed";
        step.error = error instanceof Error ? error.message : String(error);
        actor.stop();
        actor = start(machine, emitter, before, definition, key);
      } else {
        step.outputs = emitter.outputs;
      }
      emitter.outputs = [];
    }
    const snap = actor.getSnapshot() as { value: unknown; context: unknown };
    step.value = snap.value;
    step.context = structuredClone(snap.context);
    steps.push(step);
    options.onStep?.(step);
  }
  const final = actor.getSnapshot();
  const inline = findInlineChildren(final);
  if (inline.length > 0) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      `agent ${address} has child actor(s) with inline logic (${inline.join(", ")}), which cannot be persisted`,
    );
  }
  const snapshot = machine.getPersistedSnapshot(final as never);
  const children = Object.keys((final as { children?: object }).children ?? {});
  actor.stop();
  return { address, steps, snapshot, lastSequence, failed, children };
}

/** Never fires: a delayed event is not part of the message history. */
const frozenClock = {
  setTimeout: () => undefined,
  clearTimeout: () => {},
};

/**
 * The machine with every named child actor replaced by one that does nothing: an invoked
 * promise (an LLM call, say) must not run again in a replay. What such actors did is not in
 * the inbox history, so their results are not replayed either.
 */
function sandboxed(machine: AnyStateMachine): AnyStateMachine {
  const named = Object.keys(
    (machine.implementations as { actors?: Record<string, unknown> }).actors ?? {},
  );
  if (named.length === 0) return machine;
  const inert = fromPromise(() => new Promise<never>(() => {}));
  return machine.provide({
    actors: Object.fromEntries(named.map((name) => [name, inert])),
  } as never) as AnyStateMachine;
}

function start(
  machine: AnyStateMachine,
  emitter: SandboxEmitter,
  persisted: unknown,
  definition: AgentDefinition,
  key: string,
): AnyActor {
  const options: Record<string, unknown> = {};
  if (persisted !== undefined) options.snapshot = persisted;
  else if (definition.input !== undefined) options.input = definition.input(key);
  enterScope(emitter, undefined);
  try {
    const actor = createActor(machine, { ...options, clock: frozenClock });
    // observe errors: an unobserved actor error would be rethrown as an uncaught exception
    actor.subscribe({ error: () => {} });
    registerSystem(actor.system, emitter);
    actor.start();
    return actor;
  } finally {
    exitScope();
  }
}

/** Sends one event; returns the machine's error, if it failed on it. */
function send(
  actor: AnyActor,
  emitter: SandboxEmitter,
  event: { type: string },
  frame: Frame,
  sequence: number,
): unknown {
  const env = frame.envelope;
  const replyTo = env.replyTo ?? (env.from.startsWith("~") ? undefined : env.from);
  enterScope(emitter, {
    messageId: env.messageId,
    from: env.from,
    kind: env.kind,
    sequence,
    senderSequence: env.sequence,
    ...(env.correlationId === undefined ? {} : { correlationId: env.correlationId }),
    ...((env.kind === "request" || env.kind === "event") && replyTo !== undefined
      ? { replyTarget: { to: replyTo, correlationId: env.correlationId ?? env.messageId } }
      : {}),
  });
  let thrown: unknown;
  try {
    actor.send(event);
  } catch (e) {
    thrown = e ?? new Error("handler failed");
  } finally {
    exitScope();
  }
  const snap = actor.getSnapshot() as { status: string; error?: unknown };
  return (
    thrown ?? (snap.status === "error" ? (snap.error ?? new Error("actor failed")) : undefined)
  );
}

/**
 * The agent's validator's verdict, as the validate stage gave it: the event the machine gets
 * (the schema's output), or the reason it was refused.
 */
/** The validate stage's rule (`checkEvent`): the event the machine gets, or why not. */
async function validate(
  def: AgentDefinition,
  event: { type: string },
): Promise<{ event: { type: string } } | { refused: string }> {
  try {
    const checked = await checkEvent(def, event);
    return { event: checked === undefined ? event : (checked.value as { type: string }) };
  } catch (e) {
    return { refused: e instanceof Error ? e.message : String(e) };
  }
}
