/**
 * `npm run bench`: prints figures next to raw baselines measured in the same run, medians of
 * several runs, and writes bench/results/latest.json. `--quick` for a short run.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { clusterBench } from "./cluster.js";
import { runCryptoBench } from "./crypto.js";
import { rawXState, troupeEmbedded } from "./embedded.js";
import { isolationBench } from "./isolation.js";
import { recoveryBench } from "./recovery.js";

const quick = process.argv.includes("--quick");
const runs = quick ? 3 : 5;
const messages = quick ? 50_000 : 200_000;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");

async function main(): Promise<void> {
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`;
  console.log(`Troupe benchmarks (${quick ? "quick" : "full"}; medians of ${runs} runs)`);
  console.log(`machine: ${machine}\n`);

  const raw: number[] = [];
  const troupe1: number[] = [];
  const troupe100: number[] = [];
  // one unmeasured round first: JIT warm-up would otherwise land in the first figures
  rawXState(messages / 4);
  await troupeEmbedded(messages / 4, 1);
  await troupeEmbedded(messages / 4, 100);
  for (let r = 0; r < runs; r++) {
    raw.push(rawXState(messages));
    troupe1.push(await troupeEmbedded(messages, 1));
    troupe100.push(await troupeEmbedded(messages, 100));
  }
  const rawM = median(raw);
  const rows = [
    { scenario: "raw XState actor.send loop", perSec: rawM, ratio: 1 },
    {
      scenario: "Troupe embedded, 1 agent",
      perSec: median(troupe1),
      ratio: median(troupe1) / rawM,
    },
    {
      scenario: "Troupe embedded, 100 agents",
      perSec: median(troupe100),
      ratio: median(troupe100) / rawM,
    },
  ];
  console.log(
    "Embedded: messages/s through the whole pipeline (send → pipeline → handler → snapshot → ack)",
  );
  console.table(
    rows.map((r) => ({
      scenario: r.scenario,
      "msgs/s": fmt(r.perSec),
      "vs raw": r.ratio.toFixed(2),
    })),
  );

  let cluster: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Cluster: skipped (--no-cluster)\n");
  } else {
    const clusterMessages = quick ? 10_000 : 50_000;
    try {
      const c = await clusterBench(clusterMessages, runs);
      const raw = median(c.rawPerSec);
      const troupe = median(c.troupePerSec);
      cluster = {
        messages: clusterMessages,
        rawPerSec: raw,
        troupePerSec: troupe,
        ratio: troupe / raw,
      };
      console.log(
        "Cluster (one local nats-server, file storage): durable messages/s, 256 B payloads, 100 agents",
      );
      console.table([
        {
          scenario: "raw nats.js JetStream publish → consume → ack",
          "msgs/s": fmt(raw),
          "vs raw": "1.00",
        },
        {
          scenario: "Troupe agents on NATS (send → handle → snapshot → ack)",
          "msgs/s": fmt(troupe),
          "vs raw": (troupe / raw).toFixed(2),
        },
      ]);
    } catch (e) {
      console.log(`Cluster: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  let recovery: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Recovery: skipped (--no-cluster)\n");
  } else {
    try {
      const r = await recoveryBench(quick ? 2 : 6);
      const sorted = [...r.samples].sort((a, b) => a - b);
      const pct = (p: number) =>
        sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
      recovery = {
        kills: r.kills,
        agents: r.samples.length,
        leaseMs: r.leaseMs,
        p50Ms: pct(50),
        p99Ms: pct(99),
        maxMs: sorted[sorted.length - 1],
      };
      console.log(
        `Recovery: worker SIGKILLed under load (coordinator + 3 workers as processes, lease ${r.leaseMs} ms): kill → first processed message of each of its agents`,
      );
      console.table([
        {
          kills: r.kills,
          "agents measured": r.samples.length,
          "p50 ms": pct(50),
          "p99 ms": pct(99),
          "max ms": sorted[sorted.length - 1],
        },
      ]);
    } catch (e) {
      console.log(`Recovery: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  let isolation: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Isolation: skipped (--no-cluster)\n");
  } else {
    try {
      const isoMessages = quick ? 10_000 : 20_000;
      const f = await isolationBench(isoMessages, runs);
      const alone = median(f.alone);
      const share = median(f.share);
      const flood = median(f.flood);
      isolation = { messages: isoMessages, alone, share, flood };
      console.log(
        `Isolation: healthy agents' msgs/s on NATS next to a quarantined agent (${isoMessages} healthy messages a round, one process, rounds alternated)`,
      );
      console.table([
        { case: "100 healthy agents alone", "msgs/s": fmt(alone), "vs alone": "1.00" },
        {
          case: `… while a quarantined agent gets its share (${Math.round(isoMessages / 100)})`,
          "msgs/s": fmt(share),
          "vs alone": (share / alone).toFixed(2),
        },
        {
          case: `… while it gets a flood (${isoMessages / 2}), held by the same process`,
          "msgs/s": fmt(flood),
          "vs alone": (flood / alone).toFixed(2),
        },
      ]);
    } catch (e) {
      console.log(`Isolation: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  const crypto = await runCryptoBench();
  console.log("Wire: frames at 256 B payloads");
  console.table(
    crypto.map((c) => ({ case: c.name, "ops/s": fmt(c.opsPerSec), note: c.note ?? "" })),
  );

  const out = join(dirname(fileURLToPath(import.meta.url)), "..", "results");
  mkdirSync(out, { recursive: true });
  writeFileSync(
    join(out, "latest.json"),
    `${JSON.stringify({ at: new Date().toISOString(), machine, quick, runs, messages, embedded: rows, cluster, recovery, isolation, wire: crypto }, null, 2)}\n`,
  );
  console.log(`\nwritten: bench/results/latest.json`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
