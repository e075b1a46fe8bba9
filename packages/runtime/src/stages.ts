/** The built-in checkpoint stages: decode, dedup, sender, open, validate, authorize, rate-limit. */

import type { StandardSchemaV1 } from "@standard-schema/spec";
import {
  type DecodeLimits,
  decodeFrame,
  ErrorCode,
  type FrameKind,
  KEY_CHANNEL_PREFIX,
  openFrame,
  peekEnvelope,
  TroupeError,
} from "@troupe/wire";
import type { AgentDefinition } from "./agent.js";
import type { QuarantineEntry } from "./backend.js";
import type { Channels } from "./channels-table.js";
import type { Clock } from "./clock.js";
import type { Host, Peeked } from "./host.js";
import { AgentHost } from "./host.js";
import { isPromise, type Stage, type StageContext, StageOrder } from "./pipeline.js";
import { notSealed, type Sealing } from "./sealing.js";

export interface StageDeps {
  limits: DecodeLimits;
  clock: Clock;
  hostOf(address: string): Host | undefined;
  channels: Channels;
  /** The runtime's keys for agent frames, when it seals them. */
  sealing: Sealing | undefined;
  /** The quarantine entry refusing frames from this sender, if any (a cached view). */
  refusedSender(from: string): QuarantineEntry | undefined;
}

export function builtInStages(deps: StageDeps): Stage[] {
  return [
    decodeStage(deps),
    dedupStage(deps),
    senderStage(deps),
    openStage(deps),
    validateStage(deps),
    authorizeStage(deps),
    rateLimitStage(deps),
  ];
}

function decodeStage({ limits }: StageDeps): Stage {
  return {
    name: "decode",
    order: StageOrder.DECODE,
    run(ctx) {
      let envelope = ctx.frame?.envelope;
      if (ctx.frame === undefined) {
        const bytes = ctx.delivery.bytes;
        if (bytes === undefined) {
          throw new TroupeError(
            ErrorCode.DECODE_ERROR,
            "delivery carries neither a frame nor bytes",
          );
        }
        // the host peeked already when it traces (the span names the message)
        const peeked = (ctx as { peeked?: Peeked }).peeked ?? peekEnvelope(bytes, limits);
        envelope = peeked.envelope;
        if (!peeked.sealed) {
          const frame = decodeFrame(bytes, limits);
          ctx.frame = frame;
          ctx.event = frame.message.payload;
        }
      }
      ctx.envelope = envelope;
      const to = envelope!.to;
      if (to !== ctx.to) {
        throw new TroupeError(
          ErrorCode.DECODE_ERROR,
          `frame addressed to ${to} was delivered to ${ctx.to}`,
        );
      }
      return undefined;
    },
  };
}

function dedupStage({ hostOf }: StageDeps): Stage {
  return {
    name: "dedup",
    order: StageOrder.DEDUP,
    run(ctx) {
      const host = hostFor(ctx, hostOf);
      // effects of this inbox position are in the stored snapshot already
      if (host !== undefined && ctx.delivery.sequence <= host.lastSequence) {
        return { skip: "duplicate" };
      }
      return undefined;
    },
  };
}

/**
 * Refuses frames from a sender quarantined for sending bad frames, before any crypto work.
 * After dedup: a redelivery whose effects are stored is skipped as before, not parked.
 */
function senderStage({ refusedSender }: StageDeps): Stage {
  return {
    name: "sender",
    order: StageOrder.SENDER,
    run(ctx) {
      const from = ctx.envelope!.from;
      const entry = refusedSender(from);
      if (entry === undefined) return undefined;
      throw new TroupeError(
        ErrorCode.QUARANTINED,
        `sender ${from} is quarantined: ${entry.reason}`,
        {
          details: { from, since: entry.since },
        },
      );
    },
  };
}

function openStage({ limits, channels, sealing }: StageDeps): Stage {
  return {
    name: "open",
    order: StageOrder.OPEN,
    run(ctx) {
      const env = ctx.envelope!;
      if (
        sealing !== undefined &&
        (env.channel === undefined || env.channel.startsWith(KEY_CHANNEL_PREFIX))
      ) {
        openSealed(ctx, sealing);
        return undefined;
      }
      if (env.channel === undefined) {
        if (ctx.frame === undefined) {
          throw new TroupeError(ErrorCode.CRYPTO_ERROR, "sealed frame names no channel");
        }
        onlyNoticesOutsideChannel(ctx.to, env.kind);
        return undefined;
      }
      const channel = channels.get(env.channel);
      if (channel === undefined || !channel.connects(env.from, env.to)) {
        throw new TroupeError(
          ErrorCode.CHANNEL_NOT_FOUND,
          `no channel ${env.channel} between ${env.from} and ${env.to}`,
        );
      }
      if (ctx.frame !== undefined) {
        // channels are encrypted end to end: a clear frame naming one is forged or misrouted
        throw new TroupeError(
          ErrorCode.CRYPTO_ERROR,
          `frame on channel ${env.channel} is not sealed`,
        );
      }
      {
        const frame = openFrame(ctx.delivery.bytes!, channel.key, limits);
        ctx.frame = frame;
        ctx.event = frame.message.payload;
      }
      // replay protection: each sequence number of a channel direction is accepted once
      channel.acceptSequence(env.from, env.sequence, ctx.delivery.sequence);
      return undefined;
    },
  };
}

/**
 * An agent frame where agent traffic is sealed: it must be sealed with one of the runtime's
 * keys. No channel sequence window: the inbox sequence (dedup stage) and the message id
 * (the inbox's dedup window) keep a frame from being taken twice.
 */
function openSealed(ctx: StageContext, sealing: Sealing): void {
  const env = ctx.envelope!;
  if (ctx.frame !== undefined) throw notSealed(env);
  const frame = sealing.open(ctx.delivery.bytes!, env);
  ctx.frame = frame;
  ctx.event = frame.message.payload;
  // only once opened: a frame that does not open is refused as forged (which counts against
  // its sender), whatever kind its envelope claims
  onlyNoticesOutsideChannel(ctx.to, env.kind);
}

/**
 * A bound endpoint (`#<id>`) takes bytes on its channels, and notices of failures of what it
 * sent: anything else is refused here, not counted against its handler.
 */
function onlyNoticesOutsideChannel(to: string, kind: FrameKind): void {
  if (to.startsWith("#") && kind !== "error") {
    throw new TroupeError(ErrorCode.CHANNEL_NOT_FOUND, `${to} takes messages on a channel only`);
  }
}

function validateStage({ hostOf }: StageDeps): Stage {
  return {
    name: "validate",
    order: StageOrder.VALIDATE,
    run(ctx) {
      const host = hostFor(ctx, hostOf);
      if (!(host instanceof AgentHost) || ctx.frame === undefined) return undefined;
      if (ctx.frame.message.kind === "error") return undefined;
      const checked = checkEvent(host.definition, ctx.event);
      if (checked === undefined) return undefined;
      if (isPromise(checked)) {
        return checked.then((r) => {
          ctx.event = r.value;
          return undefined;
        });
      }
      ctx.event = checked.value;
      return undefined;
    },
  };
}

/**
 * `checkEvent`'s verdict on an event it accepts: `undefined` when no schema is listed for its
 * type (the event stands as sent), else the schema's result, whose `value` is what the machine
 * gets (a schema may transform); a promise of either for an asynchronous schema.
 */
export type EventCheck =
  | undefined
  | StandardSchemaV1.SuccessResult<unknown>
  | Promise<StandardSchemaV1.SuccessResult<unknown>>;

/**
 * An event checked against its agent type: an XState event, of a type the agent accepts
 * (`strictEvents`; the runtime's own `troupe.*` events need no listing), valid by its schema.
 * Throws (or rejects with) VALIDATION_ERROR. The validate stage's rule, and the sender's
 * precheck when it knows the type, so both refuse the same events for the same reasons.
 */
export function checkEvent(def: AgentDefinition, event: unknown): EventCheck {
  const type =
    typeof event === "object" && event !== null ? (event as { type?: unknown }).type : undefined;
  if (typeof type !== "string") {
    throw new TroupeError(
      ErrorCode.VALIDATION_ERROR,
      `${def.type} takes XState events: an object with a string "type"`,
    );
  }
  const schema = (def.events as Record<string, StandardSchemaV1> | undefined)?.[type];
  if (schema === undefined) {
    if (def.strictEvents && !type.startsWith("troupe.")) {
      throw new TroupeError(
        ErrorCode.VALIDATION_ERROR,
        `${def.type} does not accept events of type "${type}"`,
      );
    }
    return undefined;
  }
  const result = schema["~standard"].validate(event);
  if (isPromise<StandardSchemaV1.Result<unknown>>(result)) {
    return result.then((r) => passed(def, type, r));
  }
  return passed(def, type, result);
}

function passed(
  def: AgentDefinition,
  type: string,
  result: StandardSchemaV1.Result<unknown>,
): StandardSchemaV1.SuccessResult<unknown> {
  if (result.issues === undefined) return result;
  const issues = result.issues.map((i) => ({
    message: i.message,
    path: i.path?.map((p) => (typeof p === "object" ? String(p.key) : String(p))),
  }));
  throw new TroupeError(
    ErrorCode.VALIDATION_ERROR,
    `invalid "${type}" event for ${def.type}: ${issues.map((i) => (i.path?.length ? `${i.path.join(".")}: ${i.message}` : i.message)).join("; ")}`,
    { details: { issues } },
  );
}

function authorizeStage({ hostOf }: StageDeps): Stage {
  return {
    name: "authorize",
    order: StageOrder.AUTHORIZE,
    run(ctx) {
      const host = hostFor(ctx, hostOf);
      const authorize = host instanceof AgentHost ? host.definition.authorize : undefined;
      if (authorize === undefined) return undefined;
      const env = ctx.envelope!;
      if (!authorize({ from: env.from, to: env.to, event: ctx.event })) {
        throw new TroupeError(ErrorCode.UNAUTHORIZED, `${env.from} may not message ${env.to}`);
      }
      return undefined;
    },
  };
}

function rateLimitStage({ hostOf, clock }: StageDeps): Stage {
  const buckets = new WeakMap<Host, { tokens: number; at: number }>();
  return {
    name: "rate-limit",
    order: StageOrder.RATE_LIMIT,
    run(ctx) {
      const host = hostFor(ctx, hostOf);
      const limit = host instanceof AgentHost ? host.definition.rateLimit : undefined;
      if (limit === undefined || host === undefined) return undefined;
      const burst = limit.burst ?? limit.perSecond;
      const now = clock.now();
      let b = buckets.get(host);
      if (b === undefined) {
        b = { tokens: burst, at: now };
        buckets.set(host, b);
      }
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * limit.perSecond);
      b.at = now;
      if (b.tokens < 1) {
        throw new TroupeError(
          ErrorCode.RATE_LIMITED,
          `${ctx.to} takes at most ${limit.perSecond} messages/s (burst ${burst})`,
          { retryAfterMs: Math.ceil(((1 - b.tokens) / limit.perSecond) * 1000) },
        );
      }
      b.tokens -= 1;
      return undefined;
    },
  };
}

/** The host a message is for: carried on the context by the runtime, else looked up. */
function hostFor(
  ctx: StageContext,
  hostOf: (address: string) => Host | undefined,
): Host | undefined {
  return (ctx as { host?: Host }).host ?? hostOf(ctx.to);
}
