/** Embedded throughput: agent messages/s through the whole pipeline vs a raw XState loop. */
import { createRuntime, defineAgent } from "@troupe/runtime";
import { assign, createActor, setup } from "xstate";

const machine = setup({
  types: { context: {} as { count: number }, events: {} as { type: "inc"; by: number } },
}).createMachine({
  context: { count: 0 },
  on: { inc: { actions: assign({ count: ({ context, event }) => context.count + event.by }) } },
});

export interface EmbeddedFigures {
  rawXStatePerSec: number;
  troupePerSec: number;
  ratio: number;
}

/** A bare actor.send loop: the ceiling for one process. */
export function rawXState(messages: number): number {
  const actor = createActor(machine).start();
  const t0 = performance.now();
  for (let i = 0; i < messages; i++) actor.send({ type: "inc", by: 1 });
  const secs = (performance.now() - t0) / 1000;
  if (actor.getSnapshot().context.count !== messages) throw new Error("raw XState lost messages");
  actor.stop();
  return messages / secs;
}

/**
 * Troupe embedded: send → inbox → decode/dedup/open/validate/authorize/rate-limit → handler →
 * group-committed snapshot → ack, spread over `agents` agents.
 */
export async function troupeEmbedded(messages: number, agents: number): Promise<number> {
  const counter = defineAgent({ type: "counter", machine });
  const runtime = await createRuntime({ agents: [counter] });
  const refs = Array.from({ length: agents }, (_, i) => runtime.ref(counter, `bench-${i}`));
  // warm activation so the figure is steady-state messaging, not activation
  await Promise.all(refs.map((r) => r.send({ type: "inc", by: 0 })));
  await runtime.settled();
  const t0 = performance.now();
  // A producer with a bounded window in flight, yielding to the event loop between windows
  // (as a real sender with backpressure does), so sending and processing overlap.
  const window = 2_000;
  const sends: Promise<unknown>[] = new Array(window);
  for (let i = 0; i < messages; ) {
    const n = Math.min(window, messages - i);
    for (let j = 0; j < n; j++, i++) sends[j] = refs[i % agents]!.send({ type: "inc", by: 1 });
    await Promise.all(n === window ? sends : sends.slice(0, n));
    await new Promise<void>((r) => setImmediate(r));
  }
  await runtime.settled();
  const secs = (performance.now() - t0) / 1000;
  const stats = runtime.stats();
  await runtime.shutdown();
  if (stats.processed !== messages + agents) {
    throw new Error(`troupe processed ${stats.processed}, expected ${messages + agents}`);
  }
  return messages / secs;
}
