/** The `npm start` demo as a function: runs it in-process and prints a transcript. */
import { createRuntime, type Logger, type RuntimeStats } from "@troupe/runtime";
import { helper, type PlanReply, planner } from "./agents.js";
import { formatLine, transcriptStage } from "./transcript.js";

export interface DemoOptions {
  /** Where lines go (console.log in main.ts). Default: nowhere. */
  print?: (line: string) => void;
  goal?: string;
  /** The planner's key. Default "demo". */
  key?: string;
  /** Start transcript lines with the time since the demo started. Default false. */
  timestamps?: boolean;
}

export interface DemoResult {
  reply: PlanReply;
  stats: Readonly<RuntimeStats> & { activeAgents: number };
  /** Every line printed, in order. */
  lines: string[];
}

export const DEFAULT_GOAL = "start a weekly engineering newsletter";

export async function runDemo(options: DemoOptions = {}): Promise<DemoResult> {
  const lines: string[] = [];
  const print = (line: string): void => {
    lines.push(line);
    options.print?.(line);
  };
  const goal = options.goal ?? DEFAULT_GOAL;
  const key = options.key ?? "demo";

  // the runtime prints nothing by itself; show its warnings (a parked message, a quarantine)
  const warn = (obj: object, msg?: string): void =>
    print(`  ! ${msg ?? ""} ${JSON.stringify(obj)}`);
  const logger: Logger = { debug: () => {}, info: () => {}, warn, error: warn };

  print("Troupe demo: a planner splits a goal into tasks, three helper agents work on them,");
  print("the planner gathers their answers and replies to the request.");
  print("Runtime: embedded (in-process backend, no NATS server, no API keys).");
  print("");

  const started = Date.now();
  const elapsed = (): string =>
    options.timestamps ? `${String(Date.now() - started).padStart(5)} ms` : "";
  const runtime = await createRuntime({ agents: [planner, helper], logger, enableHooks: true });
  const client = `~${runtime.clientId}`;
  const name = (address: string): string => (address === client ? "client" : address);
  runtime.use(transcriptStage(print, name, elapsed));

  try {
    const reply = await runtime
      .ref("planner", key)
      .request<PlanReply>({ type: "plan", goal }, { timeoutMs: 10_000 });
    print(elapsed() + formatLine(`planner/${key}`, "client", "reply", reply));
    print("");
    if (reply.type === "plan.done") print(reply.summary);
    else print(`The planner answered ${reply.type}: ${"reason" in reply ? reply.reason : ""}`);
    print("");

    await runtime.settled();
    const stats = runtime.stats();
    print(
      `Stats: ${stats.processed} messages handled, ${stats.published} sent by agents, ` +
        `${stats.acked} acknowledged, ${stats.snapshots} snapshots stored,`,
    );
    print(
      `       ${stats.activations} agents activated, ${stats.rejected} rejected, ` +
        `${stats.quarantines} quarantined, ${stats.faults} faults; ${Date.now() - started} ms in all.`,
    );
    return { reply, stats, lines };
  } finally {
    await runtime.shutdown();
    print("Runtime shut down.");
  }
}
