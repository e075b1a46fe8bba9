/**
 * The demo's agents. A `planner` takes a goal, splits it into tasks, fans them out to
 * `helper/<role>` agents and answers the original request once every helper has answered.
 * Helpers "think" with a promise actor that stands in for an LLM call: deterministic text
 * after a short delay, so the demo needs no API key and always prints the same answer.
 */
import {
  currentRequest,
  defineAgent,
  type ReplyToken,
  reply,
  replyTo,
  sendToAgent,
  type TroupeErrorEvent,
} from "@troupe/runtime";
import {
  assign,
  type DoneActorEvent,
  type ErrorActorEvent,
  enqueueActions,
  fromPromise,
  setup,
} from "xstate";

export const ROLES = ["research", "write", "review"] as const;
export type Role = (typeof ROLES)[number];

export interface Task {
  role: Role;
  instruction: string;
}

/** How the planner splits a goal: one task per helper role. */
export function splitGoal(goal: string): Task[] {
  return [
    { role: "research", instruction: `Collect the facts that matter for "${goal}"` },
    { role: "write", instruction: `Draft the steps to "${goal}"` },
    { role: "review", instruction: `Point out the risks in "${goal}"` },
  ];
}

// --- messages ----------------------------------------------------------------------------

/** The client's request to the planner. */
export interface PlanRequest {
  type: "plan";
  goal: string;
}

/** What the planner sends each helper. */
export interface TaskMessage {
  type: "task";
  /** Which plan of the planner this task belongs to (stale answers are ignored). */
  plan: number;
  index: number;
  goal: string;
  instruction: string;
}

/** A helper's answer (a reply to the task message). */
export interface TaskDone {
  type: "task.done";
  plan: number;
  index: number;
  role: string;
  answer: string;
}

export interface TaskFailed {
  type: "task.failed";
  plan: number;
  index: number;
  role: string;
  reason: string;
}

export interface PlanStep extends Task {
  answer: string;
}

/** The planner's answer to a `plan` request. */
export type PlanReply =
  | { type: "plan.done"; goal: string; steps: PlanStep[]; summary: string }
  | { type: "plan.failed"; goal: string; reason: string }
  | { type: "plan.busy"; goal: string };

// --- helper ------------------------------------------------------------------------------

/** Simulated model latency per role (ms): the answers come back in a different order. */
export const THINKING_MS: Readonly<Record<Role, number>> = { research: 120, write: 80, review: 40 };

export interface ThinkInput {
  role: string;
  goal: string;
  instruction: string;
}

/** The stand-in for an LLM call: fixed text per role, after a fixed delay. */
export async function think(input: ThinkInput, signal?: AbortSignal): Promise<string> {
  if (!(ROLES as readonly string[]).includes(input.role)) {
    throw new Error(`no helper knows how to "${input.role}"`);
  }
  const role = input.role as Role;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(resolve, THINKING_MS[role]);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new Error("cancelled"));
    });
  });
  switch (role) {
    case "research":
      return "it needs an owner, a first milestone and one number that shows progress.";
    case "write":
      return "say what done means; ship the smallest useful part this week; then review it.";
    case "review":
      return "the main risk is doing too much at once: start with one measurable outcome.";
  }
}

interface Job {
  plan: number;
  index: number;
  goal: string;
  instruction: string;
  /** Where the answer goes: the planner, captured with currentRequest() when the task came in. */
  from: ReplyToken | undefined;
}

export interface HelperContext {
  role: string;
  /** Tasks not yet answered; the first is being worked on. */
  queue: Job[];
  answered: number;
}

export type HelperEvent = TaskMessage | { type: "get" };

export const helperMachine = setup({
  types: {
    context: {} as HelperContext,
    events: {} as HelperEvent,
    input: {} as { role: string },
  },
  actors: {
    // named here, invoked by name below: inline logic could not be persisted
    think: fromPromise<string, ThinkInput>(({ input, signal }) => think(input, signal)),
  },
  guards: {
    hasWork: ({ context }) => context.queue.length > 0,
  },
}).createMachine({
  id: "helper",
  context: ({ input }) => ({ role: input.role, queue: [], answered: 0 }),
  initial: "idle",
  on: {
    // tasks that arrive while working wait in the queue
    task: {
      actions: assign({
        queue: ({ context, event }) => [
          ...context.queue,
          {
            plan: event.plan,
            index: event.index,
            goal: event.goal,
            instruction: event.instruction,
            from: currentRequest(),
          },
        ],
      }),
    },
    get: {
      actions: reply<HelperContext>(({ context }) => ({
        type: "helper",
        role: context.role,
        answered: context.answered,
        queued: context.queue.length,
      })),
    },
  },
  states: {
    idle: {
      always: { guard: "hasWork", target: "working" },
    },
    working: {
      invoke: {
        src: "think",
        input: ({ context }) => {
          const job = context.queue[0]!;
          return { role: context.role, goal: job.goal, instruction: job.instruction };
        },
        onDone: {
          target: "idle",
          actions: [
            replyTo<HelperContext, DoneActorEvent<string>>(
              ({ context }) => context.queue[0]?.from,
              ({ context, event }): TaskDone => ({
                type: "task.done",
                plan: context.queue[0]!.plan,
                index: context.queue[0]!.index,
                role: context.role,
                answer: event.output,
              }),
            ),
            assign({
              queue: ({ context }) => context.queue.slice(1),
              answered: ({ context }) => context.answered + 1,
            }),
          ],
        },
        onError: {
          target: "idle",
          actions: [
            replyTo<HelperContext, ErrorActorEvent>(
              ({ context }) => context.queue[0]?.from,
              ({ context, event }): TaskFailed => ({
                type: "task.failed",
                plan: context.queue[0]!.plan,
                index: context.queue[0]!.index,
                role: context.role,
                reason: event.error instanceof Error ? event.error.message : String(event.error),
              }),
            ),
            assign({ queue: ({ context }) => context.queue.slice(1) }),
          ],
        },
      },
    },
  },
});

/** `helper/<role>`: one agent per role (research, write, review). */
export const helper = defineAgent({
  type: "helper",
  machine: helperMachine,
  input: (role) => ({ role }),
});

// --- planner -----------------------------------------------------------------------------

export interface PlannerContext {
  /** Plans started so far; the current plan's number. */
  plan: number;
  goal: string;
  tasks: Task[];
  answers: (string | null)[];
  /** The client waiting for this plan (a deferred reply). */
  client: ReplyToken | undefined;
}

export type PlannerEvent = PlanRequest | TaskDone | TaskFailed | TroupeErrorEvent;

function assemble(context: PlannerContext): PlanReply {
  const steps = context.tasks.map((t, i) => ({ ...t, answer: context.answers[i] ?? "" }));
  const summary = [
    `Plan for "${context.goal}":`,
    ...steps.map((s, i) => `  ${i + 1}. [${s.role}] ${s.answer}`),
  ].join("\n");
  return { type: "plan.done", goal: context.goal, steps, summary };
}

export const plannerMachine = setup({
  types: {
    context: {} as PlannerContext,
    events: {} as PlannerEvent,
  },
  guards: {
    allAnswered: ({ context }) => context.answers.every((a) => a !== null),
    // answers to an earlier (failed) plan may still come in: ignore those
    currentPlan: ({ context, event }) =>
      (event.type === "task.done" || event.type === "task.failed") && event.plan === context.plan,
  },
}).createMachine({
  id: "planner",
  context: { plan: 0, goal: "", tasks: [], answers: [], client: undefined },
  initial: "idle",
  states: {
    idle: {
      on: {
        plan: {
          target: "gathering",
          actions: assign({
            plan: ({ context }) => context.plan + 1,
            goal: ({ event }) => event.goal,
            tasks: ({ event }) => splitGoal(event.goal),
            answers: ({ event }) => splitGoal(event.goal).map(() => null),
            client: () => currentRequest(),
          }),
        },
      },
    },
    gathering: {
      // fan out: one task message per helper, sent once this transition is stored
      entry: enqueueActions(({ context, enqueue }) => {
        for (const [index, task] of context.tasks.entries()) {
          const message: TaskMessage = {
            type: "task",
            plan: context.plan,
            index,
            goal: context.goal,
            instruction: task.instruction,
          };
          enqueue(sendToAgent("helper", task.role, message));
        }
      }),
      always: {
        guard: "allAnswered",
        target: "idle",
        actions: [
          replyTo<PlannerContext>(
            ({ context }) => context.client,
            ({ context }) => assemble(context),
          ),
          assign({ client: undefined }),
        ],
      },
      on: {
        plan: {
          actions: reply<PlannerContext>(
            ({ context }): PlanReply => ({
              type: "plan.busy",
              goal: context.goal,
            }),
          ),
        },
        "task.done": {
          guard: "currentPlan",
          actions: assign({
            answers: ({ context, event }) =>
              context.answers.map((a, i) => (i === event.index ? event.answer : a)),
          }),
        },
        "task.failed": {
          guard: "currentPlan",
          target: "idle",
          actions: [
            replyTo<PlannerContext, TaskFailed>(
              ({ context }) => context.client,
              ({ context, event }): PlanReply => ({
                type: "plan.failed",
                goal: context.goal,
                reason: `${event.role}: ${event.reason}`,
              }),
            ),
            assign({ client: undefined }),
          ],
        },
        // something the planner sent could not be delivered or handled
        "troupe.error": {
          target: "idle",
          actions: [
            replyTo<PlannerContext, TroupeErrorEvent>(
              ({ context }) => context.client,
              ({ context, event }): PlanReply => ({
                type: "plan.failed",
                goal: context.goal,
                reason: `${event.from}: ${event.error.code}: ${event.error.message}`,
              }),
            ),
            assign({ client: undefined }),
          ],
        },
      },
    },
  },
});

/** A hand-written Standard Schema for `plan` (zod, valibot or arktype would do the same). */
const planSchema = {
  "~standard": {
    version: 1 as const,
    vendor: "troupe-example",
    validate(value: unknown) {
      const goal = (value as { goal?: unknown } | null)?.goal;
      if (typeof goal !== "string" || goal.trim() === "" || goal.length > 200) {
        return {
          issues: [{ message: "goal must be a non-empty string of at most 200 characters" }],
        };
      }
      return { value: { type: "plan" as const, goal: goal.trim() } };
    },
  },
};

/** `planner/<key>`: one plan at a time per key (a second `plan` meanwhile gets `plan.busy`). */
export const planner = defineAgent({
  type: "planner",
  machine: plannerMachine,
  events: { plan: planSchema },
});
