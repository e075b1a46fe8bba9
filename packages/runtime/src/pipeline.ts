/**
 * The checkpoint pipeline: ordered stages every inbound message passes before its handler
 * (decode, dedup, sender, open, validate, authorize, rate-limit, then the handler, always
 * last).
 * With `enableHooks`, `runtime.use(stage)` adds stages of one's own at any order below 1000.
 */
import type { Envelope, Frame } from "@troupe/wire";
import { ErrorCode, TroupeError } from "@troupe/wire";
import type { Delivery } from "./backend.js";

export const StageOrder = {
  DECODE: 100,
  DEDUP: 200,
  SENDER: 250,
  OPEN: 300,
  VALIDATE: 400,
  AUTHORIZE: 500,
  RATE_LIMIT: 600,
  HANDLER: 1000,
} as const;

/** What a stage sees. Stages fill `frame` (decode/open) and may replace `event` (validate). */
export interface StageContext {
  readonly delivery: Delivery;
  /** Recipient address. */
  readonly to: string;
  /** The routing envelope, once decoded. */
  envelope: Envelope | undefined;
  /** The whole frame, once decoded and (if sealed) opened. */
  frame: Frame | undefined;
  /** The event the handler will get (validators may transform it). */
  event: unknown;
  /** Scratch space for stages of one's own. */
  readonly locals: Map<string, unknown>;
}

/** `undefined` = carry on; `{ skip }` = acknowledge without handling (e.g. a duplicate). */
export type StageResult = undefined | { skip: string };

export interface Stage {
  readonly name: string;
  /** Position: lower runs first. Built-ins use StageOrder; the handler (1000) is always last. */
  readonly order: number;
  /** Throw a TroupeError to reject the message (it is parked and its sender told). */
  run(ctx: StageContext): StageResult | Promise<StageResult>;
}

export interface StageInfo {
  name: string;
  order: number;
}

export class Pipeline {
  #stages: Stage[] = [];

  add(stage: Stage): void {
    if (typeof stage?.run !== "function" || typeof stage.name !== "string") {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        "a stage needs a name and a run(ctx) function",
      );
    }
    if (!Number.isFinite(stage.order) || stage.order >= StageOrder.HANDLER || stage.order < 0) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        `stage "${stage.name}": order must be in [0, ${StageOrder.HANDLER}) — the handler is always last`,
      );
    }
    if (this.#stages.some((s) => s.name === stage.name)) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        `a stage named "${stage.name}" exists already`,
      );
    }
    // stable: equal orders keep insertion order
    const i = this.#stages.findIndex((s) => s.order > stage.order);
    if (i === -1) this.#stages.push(stage);
    else this.#stages.splice(i, 0, stage);
  }

  list(): StageInfo[] {
    return [
      ...this.#stages.map((s) => ({ name: s.name, order: s.order })),
      { name: "handler", order: StageOrder.HANDLER },
    ];
  }

  /** Runs every stage; synchronous when every stage is (the common case), so no await cost. */
  run(ctx: StageContext): StageResult | Promise<StageResult> {
    const stages = this.#stages;
    for (let i = 0; i < stages.length; i++) {
      const r = stages[i]!.run(ctx);
      if (r !== undefined) {
        if (isPromise(r)) return this.#continueAsync(ctx, r, i + 1);
        return r;
      }
    }
    return undefined;
  }

  async #continueAsync(
    ctx: StageContext,
    pending: Promise<StageResult>,
    from: number,
  ): Promise<StageResult> {
    const first = await pending;
    if (first !== undefined) return first;
    const stages = this.#stages;
    for (let i = from; i < stages.length; i++) {
      const r = await stages[i]!.run(ctx);
      if (r !== undefined) return r;
    }
    return undefined;
  }
}

export function isPromise<T>(v: unknown): v is Promise<T> {
  return typeof (v as { then?: unknown } | null)?.then === "function";
}
