import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createRuntime, defineAgent, ErrorCode, type Runtime, TroupeError } from "@troupe/runtime";
import { afterEach, describe, expect, it } from "vitest";
import {
  DEFAULT_GOAL,
  helper,
  helperMachine,
  type PlanReply,
  planner,
  runDemo,
  splitGoal,
  type TaskDone,
  type TaskFailed,
  transcriptStage,
} from "../src/index.js";

let runtime: Runtime | undefined;

afterEach(async () => {
  await runtime?.shutdown();
  runtime = undefined;
});

function done(reply: PlanReply): Extract<PlanReply, { type: "plan.done" }> {
  if (reply.type !== "plan.done")
    throw new Error(`expected plan.done, got ${JSON.stringify(reply)}`);
  return reply;
}

describe("demo: runDemo (what npm start runs)", () => {
  it("prints the conversation, the assembled plan and the stats, then shuts down", async () => {
    const { reply, stats, lines } = await runDemo();
    const plan = done(reply);
    expect(plan.goal).toBe(DEFAULT_GOAL);
    expect(plan.steps.map((s) => s.role)).toEqual(["research", "write", "review"]);
    expect(plan.steps.every((s) => s.answer.length > 0)).toBe(true);

    const text = lines.join("\n");
    expect(text).toContain("Runtime: embedded (in-process backend, no NATS server, no API keys).");
    const conversation = lines
      .filter((l) => l.includes(" → "))
      .map((l) => l.replace(/\s+/g, " ").trim());
    expect(conversation[0]).toBe(`client → planner/demo request plan "${DEFAULT_GOAL}"`);
    // the fan-out, in task order
    expect(conversation.slice(1, 4)).toEqual([
      `planner/demo → helper/research event task #1: Collect the facts that matter for "${DEFAULT_GOAL}"`,
      `planner/demo → helper/write event task #2: Draft the steps to "${DEFAULT_GOAL}"`,
      `planner/demo → helper/review event task #3: Point out the risks in "${DEFAULT_GOAL}"`,
    ]);
    // the answers come back as replies (in whatever order the helpers finish)
    const answers = conversation.slice(4, 7);
    expect(answers).toHaveLength(3);
    for (const role of ["research", "write", "review"]) {
      expect(answers.some((l) => l.startsWith(`helper/${role} → planner/demo reply task #`))).toBe(
        true,
      );
    }
    expect(conversation[7]).toBe("planner/demo → client reply plan.done (3 steps)");
    expect(conversation).toHaveLength(8);

    expect(text).toContain(plan.summary);
    expect(text).toMatch(/Stats: 7 messages handled, 7 sent by agents, 7 acknowledged/);
    expect(stats.rejected).toBe(0);
    expect(stats.faults).toBe(0);
    expect(lines.at(-1)).toBe("Runtime shut down.");
  });

  it("takes a goal and a key", async () => {
    const { reply, lines } = await runDemo({ goal: "learn Rust", key: "k1" });
    expect(done(reply).summary.split("\n")[0]).toBe('Plan for "learn Rust":');
    expect(lines.some((l) => l.includes("planner/k1"))).toBe(true);
  });

  const mainJs = fileURLToPath(new URL("../dist/main.js", import.meta.url));
  it.skipIf(!existsSync(mainJs))(
    "dist/main.js runs and exits 0 (skipped unless built: npm run build)",
    () => {
      const r = spawnSync(process.execPath, [mainJs], { encoding: "utf8", timeout: 20_000 });
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      expect(r.stdout).toContain("Runtime: embedded");
      expect(r.stdout).toContain(`Plan for "${DEFAULT_GOAL}":`);
      expect(r.stdout).toContain("Runtime shut down.");
    },
  );
});

describe("demo agents", () => {
  it("planner fans out to helpers and assembles their answers in task order", async () => {
    runtime = await createRuntime({ agents: [planner, helper] });
    const plan = done(
      await runtime.ref("planner", "p").request<PlanReply>({ type: "plan", goal: "g" }),
    );
    expect(plan.steps).toEqual(splitGoal("g").map((t) => ({ ...t, answer: expect.any(String) })));
    expect(plan.summary.split("\n")).toHaveLength(4);
  });

  it("serves several planners at once: helpers queue their tasks", async () => {
    runtime = await createRuntime({ agents: [planner, helper] });
    const goals = ["one", "two", "three"];
    const replies = await Promise.all(
      goals.map((goal, i) =>
        runtime!
          .ref("planner", `p${i}`)
          .request<PlanReply>({ type: "plan", goal }, { timeoutMs: 5000 }),
      ),
    );
    expect(replies.map((r) => done(r).goal)).toEqual(goals);
    for (const role of ["research", "write", "review"]) {
      expect(await runtime.ref("helper", role).request({ type: "get" })).toEqual({
        type: "helper",
        role,
        answered: 3,
        queued: 0,
      });
    }
  });

  it("answers plan.busy while a plan is in progress", async () => {
    runtime = await createRuntime({ agents: [planner, helper] });
    const ref = runtime.ref("planner", "b");
    const first = ref.request<PlanReply>({ type: "plan", goal: "first" });
    const second = await ref.request<PlanReply>({ type: "plan", goal: "second" });
    expect(second).toEqual({ type: "plan.busy", goal: "first" });
    expect(done(await first).goal).toBe("first");
  });

  it("answers plan.failed when a helper refuses its task (troupe.error)", async () => {
    // the same helper, but it lets nobody talk to it
    const grumpy = defineAgent({
      type: "helper",
      machine: helperMachine,
      input: (role) => ({ role }),
      authorize: () => false,
    });
    const lines: string[] = [];
    runtime = await createRuntime({ agents: [planner, grumpy], enableHooks: true });
    runtime.use(transcriptStage((l) => lines.push(l)));
    const reply = await runtime.ref(planner, "f").request<PlanReply>({ type: "plan", goal: "g" });
    expect(reply).toMatchObject({ type: "plan.failed", goal: "g" });
    expect(reply.type === "plan.failed" && reply.reason).toMatch(
      /^helper\/research: UNAUTHORIZED: planner\/f may not message helper\/research/,
    );
    expect(
      lines.some((l) => /helper\/research +→ planner\/f +error +troupe.error UNAUTHORIZED/.test(l)),
    ).toBe(true);
    // the planner is free again: the next plan gets the same answer, not plan.busy
    expect(
      await runtime.ref(planner, "f").request<PlanReply>({ type: "plan", goal: "h" }),
    ).toMatchObject({
      type: "plan.failed",
    });
  });

  it("refuses a plan without a goal (VALIDATION_ERROR)", async () => {
    runtime = await createRuntime({ agents: [planner, helper] });
    const e = await runtime
      .ref("planner", "v")
      .request({ type: "plan", goal: " " })
      .catch((err: unknown) => err);
    expect(e).toBeInstanceOf(TroupeError);
    expect((e as TroupeError).code).toBe(ErrorCode.VALIDATION_ERROR);
  });

  it("a helper answers whoever asked; an unknown role fails the task", async () => {
    runtime = await createRuntime({ agents: [helper] });
    const task = { type: "task", plan: 1, index: 0, goal: "g", instruction: "do it" };
    const ok = await runtime.ref("helper", "review").request<TaskDone>(task);
    expect(ok).toMatchObject({ type: "task.done", plan: 1, index: 0, role: "review" });
    const failed = await runtime.ref("helper", "translate").request<TaskFailed>(task);
    expect(failed).toEqual({
      type: "task.failed",
      plan: 1,
      index: 0,
      role: "translate",
      reason: 'no helper knows how to "translate"',
    });
  });
});
