/**
 * A readable transcript of who sent what to whom: a checkpoint stage (runtime.use) that sees
 * every message an agent accepts, just before its handler runs.
 */
import type { Stage } from "@troupe/runtime";

/** One line per message: `from → to  kind  what`. */
export function formatLine(from: string, to: string, kind: string, event: unknown): string {
  return `  ${from.padEnd(16)} → ${to.padEnd(16)} ${kind.padEnd(8)} ${describeEvent(event)}`;
}

/** A short description of the demo's events; anything else shows its type. */
export function describeEvent(event: unknown): string {
  const e = (event ?? {}) as Record<string, unknown>;
  switch (e.type) {
    case "plan":
      return `plan "${String(e.goal)}"`;
    case "task":
      return `task #${Number(e.index) + 1}: ${String(e.instruction)}`;
    case "task.done":
      return `task #${Number(e.index) + 1} done: ${clip(String(e.answer), 64)}`;
    case "task.failed":
      return `task #${Number(e.index) + 1} failed: ${String(e.reason)}`;
    case "plan.done":
      return `plan.done (${Array.isArray(e.steps) ? e.steps.length : 0} steps)`;
    case "troupe.error": {
      const error = (e.error ?? {}) as { code?: unknown; message?: unknown };
      return `troupe.error ${String(error.code)}: ${clip(String(error.message), 64)}`;
    }
    default:
      return typeof e.type === "string" ? e.type : "(no type)";
  }
}

function clip(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n - 1)}…`;
}

/**
 * The transcript stage. Runs after the built-in stages (decode, dedup, validate, authorize,
 * rate-limit), so it shows what agents accept, and never a duplicate. `name(address)` turns
 * addresses into display names (e.g. the client's `~<id>` inbox into "client").
 */
export function transcriptStage(
  print: (line: string) => void,
  name: (address: string) => string = (a) => a,
  prefix: () => string = () => "",
): Stage {
  return {
    name: "transcript",
    order: 900,
    run(ctx) {
      const env = ctx.envelope;
      if (env !== undefined) {
        // an error frame carries an ErrorInfo; the agent will see it as a troupe.error event
        const event = env.kind === "error" ? { type: "troupe.error", error: ctx.event } : ctx.event;
        print(prefix() + formatLine(name(env.from), name(env.to), env.kind, event));
      }
      return undefined;
    },
  };
}
