/**
 * `troupe.<ns>.ctl.worker.<id>.replay`: replays an agent of this worker's shards from its
 * inbox history (docs/cluster.md, "Replay"). The owner does it, so a rebuild never races a
 * live activation elsewhere.
 */
import type { Subscription } from "@nats-io/transport-node";
import {
  type ReplayReply,
  type ReplayRequest,
  type WorkerControlOptions,
  workerControlSubject,
} from "@troupe/coordinator";
import { shardOfAddress } from "@troupe/nats";
import type { ReplayStep } from "@troupe/runtime";
import { ErrorCode, isTroupeError, parseAgentAddress, TroupeError } from "@troupe/wire";

const DEFAULT_LIMIT = 1_000;

export function serveReplay(options: WorkerControlOptions): Subscription {
  const { nc, runtime, logger } = options;
  const encoder = new TextEncoder();
  const json = (v: unknown) =>
    encoder.encode(
      JSON.stringify(v, (_k, x) =>
        typeof x === "bigint" ? x.toString() : x instanceof Uint8Array ? `<${x.length} bytes>` : x,
      ),
    );
  return nc.subscribe(workerControlSubject(options.namespace, options.workerId, "replay"), {
    callback: (err, msg) => {
      if (err !== null) return;
      void (async () => {
        try {
          const req = parseRequest(msg.data);
          const shard = shardOfAddress(req.address, options.shardCount);
          if (!options.ownedShards().includes(shard)) {
            throw new TroupeError(
              ErrorCode.INVALID_STATE,
              `worker ${options.workerId} does not own shard ${shard} of ${req.address}: ask its owner (troupe status)`,
            );
          }
          const limit = req.limit ?? DEFAULT_LIMIT;
          const kept: ReplayStep[] = [];
          let total = 0;
          const report = await runtime.replay(req.address, {
            ...(req.fromSequence === undefined ? {} : { fromSequence: req.fromSequence }),
            dryRun: req.dryRun === true,
            onStep: (s) => {
              total++;
              kept.push(s);
              if (kept.length > limit) kept.shift();
            },
          });
          const snapshot = report.snapshot as { value?: unknown; context?: unknown } | undefined;
          const reply: ReplayReply = {
            address: req.address,
            worker: options.workerId,
            dryRun: report.dryRun,
            stored: report.stored,
            fromSequence: req.fromSequence ?? 1,
            toSequence: report.toSequence,
            total,
            failed: report.failed,
            steps: kept,
            final: { value: snapshot?.value, context: snapshot?.context },
          };
          let bytes = json(reply);
          if (bytes.length > nc.info!.max_payload) {
            // too many or too large steps for one message: the summary still goes back
            bytes = json({ ...reply, steps: [], truncated: true } satisfies ReplayReply);
          }
          msg.respond(bytes);
        } catch (e) {
          const code = isTroupeError(e) ? e.code : ErrorCode.INVALID_STATE;
          const message = e instanceof Error ? e.message : String(e);
          if (!isTroupeError(e)) logger.error({ err: e }, "replay failed");
          msg.respond(json({ error: { code, message } }));
        }
      })();
    },
  });
}

function parseRequest(data: Uint8Array): ReplayRequest {
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder().decode(data));
  } catch {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "a replay request is a JSON object");
  }
  const r = v as Partial<ReplayRequest> | null;
  if (r === null || typeof r !== "object" || typeof r.address !== "string") {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, 'a replay request needs "address"');
  }
  parseAgentAddress(r.address);
  const whole = (name: string, x: unknown, min: number) => {
    if (x !== undefined && !(Number.isSafeInteger(x) && (x as number) >= min)) {
      throw new TroupeError(ErrorCode.INVALID_ARGUMENT, `${name} must be an integer >= ${min}`);
    }
  };
  whole("fromSequence", r.fromSequence, 1);
  whole("limit", r.limit, 0);
  const out: ReplayRequest = { address: r.address, dryRun: r.dryRun === true };
  if (r.fromSequence !== undefined) out.fromSequence = r.fromSequence;
  if (r.limit !== undefined) out.limit = r.limit;
  return out;
}
