/** The built-in checkpoint stages: decode, dedup, sender, open, validate, authorize, rate-limit. */

import type { StandardSchemaV1 } from "@standard-schema/spec";
import {
  type DecodeLimits,
  decodeFrame,
  ErrorCode,
  KEY_CHANNEL_PREFIX,
  openFrame,
  peekEnvelope,
  TroupeError,
} from "@troupe/wire";
import type { AgentDefinition } from "./agent.js";
import type { QuarantineEntry } from "./backend.js";
import type { Channels } from "./channels-table.js";
import type { Clock } from "./clock.js";
import type { Host } from "./host.js";
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
        const peeked = peekEnvelope(bytes, limits);
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
        // a bound endpoint (`#<id>`) takes bytes on its channels, and notices of failures of
        // what it sent: anything else is refused here, not counted against its handler
        if (ctx.to.startsWith("#") && env.kind !== "error") {
          throw new TroupeError(
            ErrorCode.CHANNEL_NOT_FOUND,
            `${ctx.to} takes messages on a channel only`,
          );
        }
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
  // as for plain frames: an endpoint takes notices of failures of what it sent, nothing else
  if (ctx.to.startsWith("#") && env.kind !== "error") {
    throw new TroupeError(
      ErrorCode.CHANNEL_NOT_FOUND,
      `${ctx.to} takes messages on a channel only`,
    );
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
      const event = ctx.event as { type?: unknown } | null;
      if (typeof event !== "object" || event === null || typeof event.type !== "string") {
        throw new TroupeError(
          ErrorCode.VALIDATION_ERROR,
          `${ctx.to} takes XState events: an object with a string "type"`,
        );
      }
      return validateEvent(host.definition, ctx, event.type);
    },
  };
}

function validateEvent(
  def: AgentDefinition,
  ctx: StageContext,
  type: string,
): undefined | Promise<undefined> {
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
  const result = schema["~standard"].validate(ctx.event);
  if (isPromise<StandardSchemaV1.Result<unknown>>(result)) {
    return result.then((r) => applyResult(ctx, def, type, r));
  }
  return applyResult(ctx, def, type, result);
}

function applyResult(
  ctx: StageContext,
  def: AgentDefinition,
  type: string,
  result: StandardSchemaV1.Result<unknown>,
): undefined {
  if (result.issues !== undefined) {
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
  ctx.event = result.value;
  return undefined;
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
